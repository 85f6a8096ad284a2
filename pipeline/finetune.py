"""DVC stage `finetune`: multitask instruction tuning of the cooled-down VLM.

Vision and text-only conversations (LLaVA format), loss on the assistant's tokens only,
`finetune.epochs` epochs, re-warmup schedule. Writes data/finetune/, metrics/finetune.json and
logs/finetune.csv. Resumes after a crash (vlm/training/resume.py).
"""

from __future__ import annotations

import time

from pipeline.common import codec, curve_paths, feature_store, image_collator, resume_for, write_metrics
from pipeline.paths import COOLDOWN, ENCODER, FEATURES, FINETUNE
from pipeline.streams import shards
from vlm.config import Config
from vlm.io import atomic_dir
from vlm.model import store
from vlm.training.callbacks import count_params
from vlm.training.composer_model import ComposerLM
from vlm.training.data import dataset, loader
from vlm.training.schedules import warmup_cosine_scheduler
from vlm.training.trainer import is_main, join_processes, make_trainer, per_rank, seed_everything


def run(cfg: Config) -> None:
    join_processes()
    ft = cfg.finetune
    cdc = codec()
    vlm = store.load_vlm(COOLDOWN, ENCODER, freeze_encoder=cfg.vision.freeze)
    seed_everything(cfg.branch_seed)
    batch = per_rank(ft.batch_size, "finetune.batch_size")
    ds = dataset(shards(cfg, "instruct"), "train", batch, cfg.branch_seed)
    collate = image_collator(cdc, vlm, blank=cfg.vision.blank_images, features=feature_store(cfg, FEATURES, ENCODER))
    train = loader(ds, collate, batch, cfg.train.split_by_length)
    print(f"finetune: {len(ds)} conversations x {ft.epochs} epochs, batch {ft.batch_size}", flush=True)
    t0 = time.time()
    resume = resume_for("finetune", cfg)
    trainer = make_trainer(
        ComposerLM(vlm), train, f"{ft.epochs}ep", ft.lr, warmup_cosine_scheduler(ft.warmup_steps, ft.final_lr_ratio),
        "finetune", cfg.branch_seed, **curve_paths("finetune"), resume=resume,
        microbatch_size=cfg.train.microbatch_size, fsdp=cfg.train.fsdp,
    )
    trainer.fit()
    weights = store.full_weights(vlm)  # with FSDP: every process hands in its shards
    trainer.close()
    if not is_main():  # the first process writes the outputs
        return
    with atomic_dir(FINETUNE) as tmp:
        store.save(vlm, tmp, weights=weights)
    resume.done()
    write_metrics("finetune", {"epochs": ft.epochs, **count_params(vlm)}, time.time() - t0)
    print(f"finetune: done in {time.time() - t0:.0f}s", flush=True)
