"""Token files between `tokenize` and `stream-shard`: one ragged array per source.

A source `name` is stored as `name.ids.npy` (all sequences concatenated, int32) and
`name.offsets.npy` (int64, n+1 boundaries); instructions add `name.mask.npy` (uint8, aligned with
ids) and image-bearing sources `name.images.npy` (image path per record, relative to the raw
data folder, UTF-8 in fixed-width bytes; empty for none). `np.save` writes no timestamps, so equal
inputs give equal bytes. `Ragged.load` memory-maps all of them: reading a source costs memory for
what is read, not for its size.
"""

from __future__ import annotations

import shutil
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np


class ImageNames(Sequence):
    """Per-record image paths (None: no image) over a fixed-width bytes array (memory-mapped)."""

    def __init__(self, names: np.ndarray):
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        name = self.names[i]
        return name.decode("utf-8") if name else None

    @staticmethod
    def encode(images: Iterable[str | None]) -> np.ndarray:
        return np.array([(i or "").encode("utf-8") for i in images], dtype=np.bytes_)


@dataclass
class Ragged:
    ids: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray | None = None
    images: Sequence[str | None] | None = None

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
            names = ImageNames.encode(self.images)
            np.save(folder / f"{name}.images.npy", names if len(names) else names.astype("S1"))

    @classmethod
    def load(cls, folder: Path, name: str) -> Ragged:
        """The files `save` or `RaggedWriter` wrote; ids and mask memory-mapped, not read into memory."""
        mask_file, images_file = folder / f"{name}.mask.npy", folder / f"{name}.images.npy"
        return cls(
            np.load(folder / f"{name}.ids.npy", mmap_mode="r"),
            np.load(folder / f"{name}.offsets.npy", mmap_mode="r"),
            np.load(mask_file, mmap_mode="r") if mask_file.exists() else None,
            ImageNames(np.load(images_file, mmap_mode="r")) if images_file.exists() else None,
        )


class RaggedWriter:
    """Writes one source's files (those `Ragged.save` writes, byte for byte) a sequence at a time:
    ids, mask and image paths are appended to raw files and become .npy files at the end, so memory
    holds 8 bytes per record (its length), never the token stream."""

    def __init__(self, folder: Path, name: str, mask: bool = False, images: bool = False):
        self.folder, self.name = Path(folder), name
        self.lengths = array("q")
        self.ids_raw = (self.folder / f".{name}.ids.raw").open("wb")
        self.mask_raw = (self.folder / f".{name}.mask.raw").open("wb") if mask else None
        self.images_raw = (self.folder / f".{name}.images.raw").open("wb") if images else None
        self.image_width = 1

    def add(self, ids: Sequence[int], mask: Sequence[int] | None = None, image: str | None = None) -> None:
        self.lengths.append(len(ids))
        self.ids_raw.write(np.asarray(ids, dtype=np.int32).tobytes())
        if self.mask_raw is not None:
            self.mask_raw.write(np.asarray(mask, dtype=np.uint8).tobytes())
        if self.images_raw is not None:
            name = (image or "").encode("utf-8")
            if b"\n" in name:
                raise ValueError(f"image path {image!r} holds a line break")
            self.image_width = max(self.image_width, len(name))
            self.images_raw.write(name + b"\n")

    def close(self) -> Ragged:
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(np.frombuffer(self.lengths, dtype=np.int64), out=offsets[1:])
        np.save(self.folder / f"{self.name}.offsets.npy", offsets)
        for raw, suffix, dtype in ((self.ids_raw, "ids", np.int32), (self.mask_raw, "mask", np.uint8)):
            if raw is not None:
                raw.close()
                _raw_to_npy(Path(raw.name), self.folder / f"{self.name}.{suffix}.npy", dtype, int(offsets[-1]))
        if self.images_raw is not None:
            self.images_raw.close()
            self._fixed_width_names(Path(self.images_raw.name), len(self.lengths))
        return Ragged.load(self.folder, self.name)

    def _fixed_width_names(self, raw: Path, n: int) -> None:
        width = self.image_width
        with (self.folder / f"{self.name}.images.npy").open("wb") as out, raw.open("rb") as src:
            np.lib.format.write_array_header_1_0(out, {"descr": f"|S{width}", "fortran_order": False, "shape": (n,)})
            for line in src:
                out.write(line[:-1].ljust(width, b"\0"))
        raw.unlink()


def _raw_to_npy(raw: Path, npy: Path, dtype: type, n: int) -> None:
    """A 1-D .npy file from a raw file of `n` values, as `np.save` would write it, copied in chunks."""
    with npy.open("wb") as out, raw.open("rb") as src:
        np.lib.format.write_array_header_1_0(
            out, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (n,)})
        shutil.copyfileobj(src, out, 1 << 24)
    raw.unlink()


def llava_turns(record: dict) -> list[tuple[str, str]]:
    """(human, gpt) pairs of a validated LLaVA record."""
    conv = record["conversations"]
    return [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv) - 1, 2)]


def _batches(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def encode_sources(codec, texts: Iterable[str], captions: Iterable[tuple[str, str]], convs: Iterable[dict],
                   folder: Path, batch: int = 1024) -> dict[str, Ragged]:
    """Encode the three sources into `folder`, `batch` records at a time (iterables are consumed
    lazily: memory does not grow with the corpus); returns {name: Ragged}, memory-mapped."""
    text = RaggedWriter(folder, "text")
    for chunk in _batches(texts, batch):
        for ids in codec.encode_many(chunk):
            text.add(ids)
    cap = RaggedWriter(folder, "captions", images=True)
    for chunk in _batches(captions, batch):
        for (image, _), ids in zip(chunk, codec.encode_many([c for _, c in chunk]), strict=True):
            cap.add(ids, image=image)
    inst = RaggedWriter(folder, "instruct", mask=True, images=True)
    for record in convs:
        ids, mask = codec.conversation(llava_turns(record))
        inst.add(ids, mask, record.get("image"))
    return {"text": text.close(), "captions": cap.close(), "instruct": inst.close()}


def token_counts(sources: dict[str, Ragged]) -> dict:
    """Token metrics per source (before the format's bos/eos/placeholder tokens are added)."""
    counts = {name: {"records": len(r), "tokens": int(len(r.ids))} for name, r in sources.items()}
    counts["instruct"]["assistant_tokens"] = int(sources["instruct"].mask.sum(dtype=np.int64))
    images = sources["instruct"].images
    counts["instruct"]["with_image"] = int((images.names != b"").sum()) if isinstance(images, ImageNames) else sum(
        i is not None for i in images)
    return counts
