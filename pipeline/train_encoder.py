"""DVC stage `train-encoder`: the frozen image encoder the VLM will use, as an open_clip folder.

With `vision.pretrained` under inputs/encoder/ it is checked, loaded and written out: an open_clip
folder (open_clip_config.json + weights) as it is, or, with `vision.model` naming a built-in
open_clip model (e.g. ViT-B-16-SigLIP), that model with the checkpoint's weights. Without one (the
embedded default: nothing is ever downloaded) a tiny SigLIP-style open_clip model is trained with
open_clip's SigLIP loss on the training captions. Either way data/encoder/ ends up in open_clip's `local-dir` layout.
"""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path

from streaming import StreamingDataLoader

from pipeline.common import codec, curve_paths, resume_for, write_metrics
from pipeline.paths import ENCODER, INPUT_ENCODER
from pipeline.streams import shards
from vlm.config import Config
from vlm.io import atomic_dir
from vlm.model.lm import num_params
from vlm.model.vision import (
    build_clip,
    image_tensor,
    load_clip,
    load_named,
    patch_count,
    preprocess_config,
    save_clip,
    tiny_clip_config,
)
from vlm.training.composer_model import ComposerCLIP
from vlm.training.data import CaptionCollator, dataset
from vlm.training.schedules import warmup_cosine_scheduler
from vlm.training.trainer import curves_of, make_trainer, seed_everything

CONTEXT_LENGTH = 32  # caption tokens seen by the encoder's text tower


def check_image_tokens(model, image_tokens: int, source: str) -> None:
    """The shards were cut to the context with `shard.image_tokens` per image: it must be the encoder's."""
    if (n := patch_count(model.visual)) != image_tokens:
        raise SystemExit(f"train-encoder: {source} yields {n} image tokens per image but `shard.image_tokens` is "
                         f"{image_tokens}; set shard.image_tokens: {n} (stream-shard cuts instruction samples to "
                         "the context with it)")


def copy_pretrained(path: Path, model_name: str | None, image_tokens: int) -> dict:
    """Check, load and write the user's encoder (under inputs/encoder/) to data/encoder/."""
    print(f"train-encoder: loading {model_name or 'the open_clip folder'} from {path} ({INPUT_ENCODER}/)", flush=True)
    if model_name:  # a built-in open_clip model and its checkpoint: saved in the local-dir layout
        model, model_cfg, pp = load_named(model_name, path)
        check_image_tokens(model, image_tokens, f"{model_name} ({path})")
        with atomic_dir(ENCODER) as tmp:
            save_clip(model, model_cfg, tmp, pp)
    else:
        model, pp = load_clip(path)  # fails here, with the path, if the folder is not a usable checkpoint
        check_image_tokens(model, image_tokens, f"the open_clip folder {path}")
        with atomic_dir(ENCODER) as tmp:
            for f in path.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
    return {"source": str(path), "model": model_name or "open_clip folder", "params": num_params(model),
            "image_size": pp["size"]}


def train_tiny(cfg: Config) -> dict:
    tiny, image_size = cfg.vision.tiny, cfg.prepare.image_size
    cdc = codec()
    clip_cfg = tiny_clip_config(image_size, tiny.patch_size, tiny.width, tiny.layers, tiny.heads, tiny.embed_dim,
                                cdc.vocab_size, CONTEXT_LENGTH, cdc.ids["pad"], cdc.ids["eos"])
    pp = preprocess_config(image_size)
    seed_everything(cfg.seed)
    clip = build_clip(clip_cfg)
    batch = tiny.batch_size
    collate = CaptionCollator(cdc.ids, CONTEXT_LENGTH, functools.partial(image_tensor, preprocess_cfg=pp))
    train = StreamingDataLoader(dataset(shards(cfg, "captions"), "train", batch, cfg.seed), batch_size=batch,
                                collate_fn=collate)
    print(f"train-encoder: tiny SigLIP-style open_clip model, {num_params(clip):,} "
          f"params, {tiny.steps} steps of {batch} image-caption pairs", flush=True)
    resume = resume_for("train-encoder", cfg)
    trainer = make_trainer(ComposerCLIP(clip), train, f"{tiny.steps}ba", tiny.lr,
                           warmup_cosine_scheduler(max(tiny.steps // 10, 1), 0.1), "train-encoder", cfg.seed,
                           **curve_paths("encoder"), resume=resume,
                           loss_per_token=False)  # the SigLIP loss is over pairs, not tokens
    trainer.fit()
    losses = curves_of(trainer).column("loss")
    trainer.close()
    with atomic_dir(ENCODER) as tmp:
        save_clip(clip.eval(), clip_cfg, tmp, pp)
    resume.done()
    return {"source": "trained", "params": num_params(clip), "final_loss": losses[max(losses)],
            "image_size": image_size}


def run(cfg: Config) -> None:
    t0 = time.time()
    pretrained = Path(cfg.vision.pretrained) if cfg.vision.pretrained else None
    info = copy_pretrained(pretrained, cfg.vision.model, cfg.shard.image_tokens) if pretrained else train_tiny(cfg)
    write_metrics("encoder", info, time.time() - t0)
    print(f"train-encoder: done in {time.time() - t0:.1f}s ({info['source']})", flush=True)
