"""DVC stage `encode-images`: the frozen encoder's features of every distinct image, computed once.

With `vision.freeze` and `vision.cache_features` (the default) it runs the penultimate-layer patch
encoder of data/encoder over each distinct image of the caption and instruction shards (both splits)
and of the evaluation sets, and writes the feature store data/features (vlm/data/features.py) that
mixed-cooldown, finetune and evaluate read instead of encoding every image on every step. Otherwise it
writes a store marked disabled, and those stages encode as they go. Writes metrics/features.json.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
from PIL import Image

from pipeline.common import write_metrics
from pipeline.paths import ENCODER, FEATURES, RAW, SHARDS
from vlm.config import Config
from vlm.data import readers
from vlm.data.batches import GREY, decode_image
from vlm.data.features import folder_fingerprint, image_key, write_disabled, write_store
from vlm.data.shards import SPLITS
from vlm.io import atomic_dir
from vlm.model.vision import PatchEncoder, image_tensor, load_clip
from vlm.training.data import dataset

BATCH = 64  # images per encoder forward; a fixed size, so the features are the same bytes every run


def shard_images(name: str):
    """(key, read) of every image sample of source `name`, split by split, in sample order."""
    for split in SPLITS:
        ds = dataset(SHARDS / name, split, batch_size=1, seed=0, shuffle=False)
        for i in range(ds.num_samples):
            if data := ds[i]["image"]:
                yield image_key(data), functools.partial(lambda ds, i: ds[i]["image"], ds, i)  # read again later


def eval_images(eval_dir: Path):
    """(key, read) of the image of every vision evaluation item, task by task."""
    for task in readers.load_tasks(eval_dir).values():
        for item in task["items"]:
            if item.get("image") is not None:
                path = Path(item["image"])
                yield image_key(path.read_bytes()), path.read_bytes


def run(cfg: Config) -> None:
    t0 = time.time()
    if not cfg.vision.cached_features:
        why = "vision.freeze is false" if not cfg.vision.freeze else "vision.cache_features is false"
        with atomic_dir(FEATURES) as tmp:
            write_disabled(tmp, why)
        write_metrics("features", {"enabled": False}, time.time() - t0)
        print(f"encode-images: no cache ({why}): the training stages encode every image as they go", flush=True)
        return
    clip, pp = load_clip(ENCODER)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = PatchEncoder(clip.visual).freeze().to(device)
    side = pp["size"] if isinstance(pp["size"], int) else max(pp["size"])
    grey = Image.new("RGB", (side, side), GREY)  # what the collator's blank images become after preprocessing

    @torch.no_grad()
    def encode(images: list[Image.Image]) -> torch.Tensor:
        return encoder(image_tensor(images, pp).to(device))

    def encode_files(files: list[bytes]) -> torch.Tensor:
        return encode([decode_image(f) for f in files])

    images = (pair for gen in (shard_images("captions"), shard_images("instruct"), eval_images(RAW / "eval"))
              for pair in gen)
    print(f"encode-images: the frozen encoder's {encoder.num_patches} x {encoder.width} patch features of every "
          "distinct training and evaluation image ...", flush=True)
    with atomic_dir(FEATURES) as tmp:
        stats = write_store(tmp, images, encode_files, encode([grey])[0], folder_fingerprint(ENCODER), BATCH)
    write_metrics("features", {"enabled": True, **stats}, time.time() - t0)
    print(f"encode-images: done in {time.time() - t0:.1f}s; {stats['distinct_images']:,} distinct images of "
          f"{stats['images']:,}, {stats['bytes'] / 2**20:.1f} MiB", flush=True)
