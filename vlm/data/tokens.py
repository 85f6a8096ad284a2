"""Token files between `tokenize` and `stream-shard`: one ragged array per source.

A source `name` is stored as `name.ids.npy` (all sequences concatenated, int32) and
`name.offsets.npy` (int64, n+1 boundaries); instructions add `name.mask.npy` (uint8, aligned with
ids) and image-bearing sources `name.images.json` (image path per record, relative to the raw
data folder, or null). `np.save` writes no timestamps, so equal inputs give equal bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Ragged:
    ids: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray | None = None
    images: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def mask_of(self, i: int) -> np.ndarray:
        assert self.mask is not None
        return self.mask[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def from_lists(
        cls, seqs: Sequence[Sequence[int]], masks: Sequence[Sequence[int]] | None = None, images=None
    ) -> Ragged:
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
        mask = None
        if masks is not None:
            mask = np.fromiter((m for s in masks for m in s), dtype=np.uint8, count=int(offsets[-1]))
        return cls(flat, offsets, mask, images)

    def save(self, folder: Path, name: str) -> None:
        np.save(folder / f"{name}.ids.npy", self.ids)
        np.save(folder / f"{name}.offsets.npy", self.offsets)
        if self.mask is not None:
            np.save(folder / f"{name}.mask.npy", self.mask)
        if self.images is not None:
            (folder / f"{name}.images.json").write_text(json.dumps(self.images, indent=0) + "\n")

    @classmethod
    def load(cls, folder: Path, name: str) -> Ragged:
        mask_file, images_file = folder / f"{name}.mask.npy", folder / f"{name}.images.json"
        return cls(
            np.load(folder / f"{name}.ids.npy"),
            np.load(folder / f"{name}.offsets.npy"),
            np.load(mask_file) if mask_file.exists() else None,
            json.loads(images_file.read_text()) if images_file.exists() else None,
        )


def llava_turns(record: dict) -> list[tuple[str, str]]:
    """(human, gpt) pairs of a validated LLaVA record."""
    conv = record["conversations"]
    return [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv) - 1, 2)]


def encode_sources(codec, texts: list[str], captions: list[tuple[str, str]], convs: list[dict]) -> dict:
    """Encode the three sources; returns {name: Ragged}. Image paths are kept as given."""
    out = {"text": Ragged.from_lists(codec.encode_many(texts))}
    out["captions"] = Ragged.from_lists(
        codec.encode_many([c for _, c in captions]), images=[img for img, _ in captions]
    )
    encoded = [codec.conversation(llava_turns(r)) for r in convs]
    out["instruct"] = Ragged.from_lists(
        [ids for ids, _ in encoded], [m for _, m in encoded], images=[r.get("image") for r in convs]
    )
    return out


def token_counts(sources: dict[str, Ragged]) -> dict:
    """Token metrics per source (before the format's bos/eos/placeholder tokens are added)."""
    counts = {name: {"records": len(r), "tokens": int(len(r.ids))} for name, r in sources.items()}
    counts["instruct"]["assistant_tokens"] = int(sources["instruct"].mask.sum())
    counts["instruct"]["with_image"] = sum(i is not None for i in sources["instruct"].images)
    return counts
