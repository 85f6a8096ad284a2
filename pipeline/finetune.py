"""DVC stage `finetune`: multitask instruction tuning of the cooled-down VLM.

Vision and text-only conversations (LLaVA format), loss on the assistant's tokens only,
`finetune.epochs` epochs, re-warmup schedule. Writes data/finetune/, metrics/finetune.json and
logs/finetune.csv.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.common import codec, image_collator
from pipeline.paths import COOLDOWN, ENCODER, FINETUNE, SHARDS
from vlm import params as P
from vlm.io import atomic_dir, write_json
from vlm.model import store
from vlm.training.callbacks import count_params
from vlm.training.composer_model import ComposerLM
from vlm.training.data import dataset, loader
from vlm.training.schedules import warmup_cosine_scheduler
from vlm.training.trainer import make_trainer, seed_everything

METRICS, CURVES = Path("metrics/finetune.json"), Path("logs/finetune.csv")


def main() -> None:
    params = P.load()
    seed = P.integer(params, "seed", lo=0)
    epochs = P.positive_int(params, "finetune.epochs")
    batch = P.positive_int(params, "finetune.batch_size")
    lr = P.real(params, "finetune.lr", 0.0, 1.0, lo_open=True)
    warmup = P.integer(params, "finetune.warmup_steps", lo=0)
    final_ratio = P.fraction(params, "finetune.final_lr_ratio")
    freeze = bool(P.get(params, "vision.freeze"))
    blank = bool(P.get(params, "vision.blank_images"))

    cdc = codec()
    vlm = store.load_vlm(COOLDOWN, ENCODER, freeze_encoder=freeze)
    seed_everything(seed)
    ds = dataset(SHARDS / "instruct", "train", batch, seed)
    train = loader(ds, image_collator(cdc, vlm, blank=blank), batch)
    print(f"finetune: {len(ds)} conversations x {epochs} epochs, batch {batch}", flush=True)
    t0 = time.time()
    trainer = make_trainer(
        ComposerLM(vlm), train, f"{epochs}ep", lr, warmup_cosine_scheduler(warmup, final_ratio), CURVES, seed,
        run_name="finetune",
    )
    trainer.fit()
    trainer.close()
    with atomic_dir(FINETUNE) as tmp:
        store.save(vlm, tmp)
    write_json(METRICS, {"epochs": epochs, "seconds": round(time.time() - t0, 1), **count_params(vlm)})
    print(f"finetune: done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
