"""DVC stage `train-encoder`: the frozen image encoder the VLM will use, as an open_clip folder.

With `vision.pretrained` naming a local open_clip folder (e.g. a SigLIP checkpoint you placed on
disk), it is checked, loaded and copied. Without one (the embedded default: nothing is ever
downloaded) a tiny SigLIP-style open_clip model is trained with open_clip's SigLIP loss on the
training captions. Either way data/encoder/ ends up in open_clip's `local-dir` layout.
"""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path

from torch.utils.data import DataLoader

from pipeline.common import codec
from pipeline.paths import ENCODER, SHARDS
from vlm import params as P
from vlm.io import atomic_dir, write_json
from vlm.model.lm import num_params
from vlm.model.vision import build_clip, image_tensor, load_clip, preprocess_config, save_clip, tiny_clip_config
from vlm.training.composer_model import ComposerCLIP
from vlm.training.data import CaptionCollator, dataset
from vlm.training.schedules import warmup_cosine_scheduler
from vlm.training.trainer import curves_of, make_trainer, seed_everything

METRICS, CURVES = Path("metrics/encoder.json"), Path("logs/encoder.csv")
CONTEXT_LENGTH = 32  # caption tokens seen by the encoder's text tower


def copy_pretrained(path: Path) -> dict:
    model, pp = load_clip(path)  # fails here, with the path, if the folder is not a usable checkpoint
    with atomic_dir(ENCODER) as tmp:
        for f in path.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
    return {"source": str(path), "params": num_params(model), "image_size": pp["size"]}


def train_tiny(params: dict, seed: int) -> dict:
    image_size = P.integer(params, "prepare.image_size", lo=16)
    tiny = {k: P.positive_int(params, f"vision.tiny.{k}") for k in ("patch_size", "width", "layers", "heads",
                                                                    "embed_dim", "steps", "batch_size")}
    lr = P.real(params, "vision.tiny.lr", 0.0, 1.0, lo_open=True)
    cdc = codec()
    try:
        cfg = tiny_clip_config(image_size, tiny["patch_size"], tiny["width"], tiny["layers"], tiny["heads"],
                               tiny["embed_dim"], cdc.vocab_size, CONTEXT_LENGTH, cdc.ids["pad"], cdc.ids["eos"])
    except ValueError as e:
        raise P.ParamError(f"params.yaml: `vision.tiny`: {e}") from e
    pp = preprocess_config(image_size)
    seed_everything(seed)
    clip = build_clip(cfg)
    batch = tiny["batch_size"]
    collate = CaptionCollator(cdc.ids, CONTEXT_LENGTH, functools.partial(image_tensor, preprocess_cfg=pp))
    train = DataLoader(dataset(SHARDS / "captions", "train", batch, seed), batch_size=batch, collate_fn=collate)
    print(f"train-encoder: tiny SigLIP-style open_clip model, {num_params(clip):,} "
          f"params, {tiny['steps']} steps of {batch} image-caption pairs", flush=True)
    trainer = make_trainer(ComposerCLIP(clip), train, f"{tiny['steps']}ba", lr,
                           warmup_cosine_scheduler(max(tiny["steps"] // 10, 1), 0.1), CURVES, seed,
                           run_name="train-encoder")
    trainer.fit()
    rows = curves_of(trainer).rows
    trainer.close()
    with atomic_dir(ENCODER) as tmp:
        save_clip(clip.eval(), cfg, tmp, pp)
    final = next(rows[s]["loss"] for s in sorted(rows, reverse=True) if "loss" in rows[s])
    return {"source": "trained", "params": num_params(clip), "final_loss": final,
            "image_size": image_size}


def main() -> None:
    params = P.load()
    seed = P.integer(params, "seed", lo=0)
    pretrained = P.optional_path(params, "vision.pretrained")
    t0 = time.time()
    info = copy_pretrained(pretrained) if pretrained else train_tiny(params, seed)
    info["seconds"] = round(time.time() - t0, 1)
    write_json(METRICS, info)
    print(f"train-encoder: done in {info['seconds']}s ({info['source']})", flush=True)


if __name__ == "__main__":
    main()
