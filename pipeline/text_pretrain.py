"""DVC stage `text-pretrain`: Composer trains the LM from scratch on the text shards.

Main schedule: linear warmup, cosine decay over the whole token budget. The LM's weights are saved
exactly at each fraction of `pretrain.branch_points` of the budget (with `pretrain.save_optimizer`,
Adam's moments beside them), with the validation loss measured there. Writes data/pretrain/ (ba{N}/
weight folders and schedule.json), metrics/pretrain.json and the curve logs/pretrain.csv. Resumes after
a crash (vlm/training/resume.py).
"""

from __future__ import annotations

import shutil
import time

from composer.core import Event

from pipeline.common import codec, curve_paths, new_lm, resume_for, write_metrics
from pipeline.paths import PRETRAIN
from pipeline.streams import shards
from vlm.config import Config
from vlm.data.batches import Collator
from vlm.io import atomic_dir, write_json
from vlm.model.lm import num_params
from vlm.training.callbacks import SaveWeightsAt
from vlm.training.composer_model import ComposerLM
from vlm.training.data import dataset, loader
from vlm.training.schedules import warmup_cosine, warmup_cosine_scheduler
from vlm.training.trainer import curves_of, is_main, join_processes, make_trainer, per_rank


def run(cfg: Config) -> None:
    join_processes()
    pt, seq_len = cfg.pretrain, cfg.shard.seq_len
    points = pt.branch_steps()
    save_at = set(points.values())

    cdc = codec()
    lm = new_lm(cfg.model.preset, cdc.vocab_size, cfg.seed)
    collate = Collator(cdc.ids)
    batch, text = per_rank(pt.batch_size, "pretrain.batch_size"), shards(cfg, "text")
    train = loader(dataset(text, "train", batch, cfg.seed), collate, batch, cfg.train.split_by_length)
    val = loader(dataset(text, "val", batch, cfg.seed, shuffle=False), collate, batch)
    tokens_per_step = pt.batch_size * seq_len
    print(
        f"text-pretrain: {cfg.model.preset} LM, {num_params(lm):,} params, {pt.steps} steps x "
        f"{tokens_per_step} tokens = {pt.steps * tokens_per_step:,} tokens; branch points at steps {sorted(save_at)}",
        flush=True,
    )

    def at_branch_point(state, event) -> bool:
        return event == Event.BATCH_END and state.timestamp.batch.value in save_at

    t0 = time.time()
    resume = resume_for("text-pretrain", cfg)
    staged = resume.folder / "branch_points"  # kept across a crash, like the resume checkpoints
    save = SaveWeightsAt(lm, save_at, staged, optimizer=pt.save_optimizer)
    trainer = make_trainer(
        ComposerLM(lm), train, f"{pt.steps}ba", pt.lr, warmup_cosine_scheduler(pt.warmup_steps, pt.final_lr_ratio),
        "text-pretrain", cfg.seed, **curve_paths("pretrain"), resume=resume, weight_decay=pt.weight_decay,
        eval_data=val, eval_interval=at_branch_point, callbacks=[save],
        microbatch_size=cfg.train.microbatch_size, fsdp=cfg.train.fsdp,
    )
    trainer.fit()
    val_loss = curves_of(trainer).column("val_loss")
    trainer.close()
    if not is_main():  # the first process writes the outputs
        return
    schedule = {
        "steps": pt.steps, "tokens_per_step": tokens_per_step, "lr": pt.lr, "warmup_steps": pt.warmup_steps,
        "final_lr_ratio": pt.final_lr_ratio, "branch_points": {str(f): s for f, s in points.items()},
        "preset": cfg.model.preset, "seed": cfg.seed,
    }
    with atomic_dir(PRETRAIN) as tmp:
        for step in sorted(save_at):
            shutil.copytree(staged / f"ba{step}", tmp / f"ba{step}")
        write_json(tmp / "schedule.json", schedule)
    resume.done()
    metrics = {
        "val_loss": {str(f): val_loss.get(s) for f, s in points.items()},
        "tokens": pt.steps * tokens_per_step,
        "lr_at_branch_points": {
            str(f): warmup_cosine(s, pt.steps, pt.lr, pt.warmup_steps, pt.final_lr_ratio) for f, s in points.items()
        },
    }
    write_metrics("pretrain", metrics, time.time() - t0)
    print(f"text-pretrain: done in {time.time() - t0:.1f}s; val loss {metrics['val_loss']}", flush=True)
