"""Cooldown and fine-tuning steps with images (issue 9, item 3), three ways side by side:

- **pixels**: every image decoded, preprocessed and encoded by the frozen encoder at every step,
  each process's batch one padded microbatch (the pipeline before the cache);
- **features**: the frozen encoder's cached features (`vision.cache_features`, stage encode-images);
- **features + split**: also `train.split_by_length` (short and long rows as two microbatches).

In the folder `data_rates.measure` filled (the default world's data/raw and data/shards), with a
randomly initialised encoder of the default's tiny shape saved as data/encoder and the stage
`encode-images` run on it (timed: the cache's one-time cost), and a random `tiny` LM: step times do
not depend on what the weights have learnt. Each variant trains through `make_trainer` on the
stages' own datasets and collators; the projected stage time is the default's step count times the
measured seconds per step.
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import torch

from bench.data_memory import in_folder
from bench.stack import StepClock
from vlm.config import MAX_SEQ_LEN, Config

VARIANTS = {"pixels": (False, False), "features": (True, False), "features + split": (True, True)}


def _seconds_per_step(vlm, data, steps: int, warmup: int, lr: float) -> float:
    from composer.optim import ConstantScheduler

    from vlm.training.composer_model import ComposerLM
    from vlm.training.trainer import make_trainer

    clock = StepClock(torch.device("cpu"))
    trainer = make_trainer(ComposerLM(vlm), data, f"{warmup + steps}ba", lr, ConstantScheduler(), "bench", 0,
                           curves=Path("bench_curves.csv"), timings=Path("bench_timings.csv"), callbacks=[clock])
    trainer.fit()
    trainer.close()
    return (clock.times[-1] - clock.times[warmup - 1]) / steps


def measure(cfg: Config, work: Path, steps: int = 20, warmup: int = 3, read_samples: int | None = None) -> dict:
    """Seconds per cooldown and fine-tuning step of each variant, and the projected stage times; the
    read with cached features covers `read_samples` (default: one cooldown's worth)."""
    from bench.data_rates import read_rate
    from pipeline import encode_images
    from pipeline.common import image_collator
    from pipeline.cooldown import batch_mix
    from vlm.data.batches import Collator
    from vlm.data.features import FeatureStore
    from vlm.data.tokenizer import Codec
    from vlm.io import read_json
    from vlm.model.lm import lm_config
    from vlm.model.vision import build_clip, load_clip, preprocess_config, save_clip, tiny_clip_config
    from vlm.model.vlm import build_vlm
    from vlm.training.data import dataset, loader, mixed_dataset
    from vlm.training.trainer import seed_everything

    cd, ft, tiny = cfg.cooldown, cfg.finetune, cfg.vision.tiny
    with in_folder(work):
        cdc = Codec.from_file(Path("data/tokens/tokenizer.json"))
        clip_cfg = tiny_clip_config(cfg.prepare.image_size, tiny.patch_size, tiny.width, tiny.layers, tiny.heads,
                                    tiny.embed_dim, cdc.vocab_size, 32, cdc.ids["pad"], cdc.ids["eos"])
        seed_everything(0)
        save_clip(build_clip(clip_cfg), clip_cfg, Path("data/encoder"), preprocess_config(cfg.prepare.image_size))
        clip, _ = load_clip(Path("data/encoder"))  # as the stages load it, its preprocessing attached
        t0 = time.perf_counter()
        encode_images.run(cfg)
        encode_seconds = time.perf_counter() - t0
        store = FeatureStore(Path("data/features"), Path("data/encoder"))
        vlm = build_vlm(lm_config(cfg.model.preset, cdc.vocab_size, MAX_SEQ_LEN), clip, cdc.ids["image"], True)
        stats = read_json(Path("data/shards/stats.json"))
        _, counts = batch_mix(cd, stats, vlm.num_image_tokens)
        ft_steps = ft.epochs * -(-stats["instruct/train"]["samples"] // ft.batch_size)
        out: dict = {"encode_images_seconds": encode_seconds, "cooldown_steps": cd.steps, "finetune_steps": ft_steps,
                     "steps_timed": steps, "variants": {}}
        for i, (name, (cached, split)) in enumerate(VARIANTS.items()):
            # a copy of the shards per variant: Streaming refuses a folder a finished dataset still holds
            shards = Path(f"shards_{i}")
            shutil.copytree("data/shards", shards)
            collate: Collator = image_collator(cdc, vlm, features=store if cached else None)
            mix = mixed_dataset({shards / k: n for k, n in counts.items()}, "train", cd.batch_size, 0,
                                (steps + warmup) * cd.batch_size)
            cooldown = _seconds_per_step(copy.deepcopy(vlm), loader(mix, collate, cd.batch_size, split), steps,
                                         warmup, cd.rewarm_lr)
            ds = dataset(shards / "instruct", "train", ft.batch_size, 0)
            finetune = _seconds_per_step(copy.deepcopy(vlm), loader(ds, collate, ft.batch_size, split), steps,
                                         warmup, ft.lr)
            out["variants"][name] = {
                "cooldown_seconds_per_step": cooldown, "finetune_seconds_per_step": finetune,
                "projected_seconds": cooldown * cd.steps + finetune * ft_steps,
            }
            print(f"bench: {name}: cooldown {cooldown:.3f} s/step, finetune {finetune:.3f} s/step", flush=True)
        shutil.copytree("data/shards", Path("data/shards_read"))  # beside data/tokens, as read_rate expects
        samples = read_samples or cd.steps * cd.batch_size
        out["streaming_read_features"] = read_rate(cfg, Path("data/shards_read"), samples, store)
        base = out["variants"]["pixels"]["projected_seconds"]
        for v in out["variants"].values():
            v["speedup"] = base / v["projected_seconds"]
    return out
