"""Cached frozen-encoder features (`vision.cache_features`): every distinct image encoded once.

A frozen encoder gives an image the same features at every step of every epoch, so the stage
`encode-images` runs it once per distinct image file and the cooldown, fine-tuning and evaluation
collators look the features up instead of decoding, preprocessing and encoding the image again. An
image is keyed by the sha1 of its file's bytes, as the shards and the evaluation sets hold them. The
store is a folder:

    features.npy  float32 (images + 1, patches, width); the last row is the grey image of
                  `vision.blank_images`. Readers memory-map it, so it is never read whole.
    index.json    {"keys": [sha1 of each row's image], "encoder": fingerprint of the encoder folder,
                   "patches", "width"}; or {"enabled": false} where the stages encode every step.

Rows follow the order in which `encode-images` first meets each image (a fixed scan of the shards,
then the evaluation sets), and a fixed batch size, so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from vlm.io import read_json, write_json

ROWS_FILE, INDEX_FILE = "features.npy", "index.json"


def image_key(data: bytes) -> str:
    """The store's key of an encoded image file."""
    return hashlib.sha1(data).hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the names and bytes of every file in `folder`: which encoder made the features."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_store(
    out: Path,
    images: Iterable[tuple[str, Callable[[], bytes]]],
    encode: Callable[[list[bytes]], torch.Tensor],
    blank: torch.Tensor,
    encoder_fingerprint: str,
    batch_size: int = 64,
    log: Callable[[str], None] = print,
) -> dict:
    """Encode each distinct image of `images` once into the folder `out`; returns its statistics.

    `images` yields (key, read) pairs, `read()` giving the image file's bytes, so that a first pass
    can count the distinct images without holding their bytes. `encode` maps a list of image files
    to features (n, patches, width); `blank` is the grey image's (patches, width).
    """
    first: dict[str, Callable[[], bytes]] = {}
    seen = 0
    for key, read in images:
        seen += 1
        first.setdefault(key, read)
    keys = list(first)
    shape = (len(keys) + 1, *blank.shape)
    rows = np.lib.format.open_memmap(out / ROWS_FILE, mode="w+", dtype=np.float32, shape=shape)
    for start in range(0, len(keys), batch_size):
        chunk = keys[start : start + batch_size]
        rows[start : start + len(chunk)] = encode([first[k]() for k in chunk]).float().cpu().numpy()
        done = start + len(chunk)
        if done % (batch_size * 50) < batch_size or done == len(keys):
            log(f"  {done:,} / {len(keys):,} images encoded")
    rows[len(keys)] = blank.float().cpu().numpy()
    rows.flush()
    del rows
    write_json(out / INDEX_FILE, {"enabled": True, "keys": keys, "encoder": encoder_fingerprint,
                             "patches": shape[1], "width": shape[2]})
    return {"images": seen, "distinct_images": len(keys), "patches": shape[1], "width": shape[2],
            "bytes": int(np.prod(shape)) * 4}


def write_disabled(out: Path, why: str) -> None:
    """The store of a run that encodes every step: an index that says so."""
    write_json(out / INDEX_FILE, {"enabled": False, "why": why})


class FeatureStore:
    """Looks up the cached features of encoded image files (the `encode-images` folder).

    `encoder_dir`, when given, must be the folder the features were made with (same fingerprint):
    a stale store fails here, naming both folders, instead of training on another encoder's features.
    """

    def __init__(self, folder: Path, encoder_dir: Path | None = None):
        folder = Path(folder)
        if not (folder / INDEX_FILE).is_file():
            raise FileNotFoundError(f"{folder / INDEX_FILE}: no feature cache (run the stage encode-images)")
        index = read_json(folder / INDEX_FILE)
        if not index.get("enabled"):
            raise ValueError(f"{folder}: the feature cache was written disabled ({index.get('why')}); "
                             "run encode-images with vision.freeze and vision.cache_features true")
        if encoder_dir is not None and index["encoder"] != folder_fingerprint(encoder_dir):
            raise ValueError(f"{folder}: the cached features were made by another encoder than {encoder_dir}; "
                             "re-run encode-images (dvc repro)")
        self.folder = folder
        self.rows = np.load(folder / ROWS_FILE, mmap_mode="r")
        self.row_of = {k: i for i, k in enumerate(index["keys"])}
        self.blank_row = len(index["keys"])

    def __call__(self, images: Sequence[bytes], blank: bool = False) -> torch.Tensor:
        """Features (n, patches, width) of encoded image files; the grey image's for all with `blank`."""
        rows = []
        for data in images:
            if not isinstance(data, bytes):
                raise TypeError(f"the feature cache looks images up by their file bytes, got {type(data).__name__}")
            if blank:
                rows.append(self.blank_row)
                continue
            key = image_key(data)
            if key not in self.row_of:
                raise KeyError(f"image sha1 {key} is not in the feature cache {self.folder}: it was written "
                               "for other shards or evaluation sets; re-run encode-images (dvc repro)")
            rows.append(self.row_of[key])
        return torch.from_numpy(np.ascontiguousarray(self.rows[rows]))
