"""MosaicML Streaming MDS shards: one dataset per source, each with `train` and `val` splits.

Every sample of every source has the same three columns, so one collator serves any mix:
    tokens  ndarray:int32   the formatted sequence (tokenizer.py), one [image] placeholder at most
    mask    ndarray:uint8   1 where the loss applies (all text tokens, captions, assistant answers)
    image   bytes           the encoded image file (PNG/JPEG) or b"" when the sample has none
Shards are written uncompressed (design.md) and read back by stock `StreamingDataset`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from streaming import MDSWriter

from vlm.data.tokenizer import Codec
from vlm.data.tokens import Ragged

COLUMNS = {"tokens": "ndarray:int32", "mask": "ndarray:uint8", "image": "bytes"}
SOURCES = ("text", "captions", "instruct")
SPLITS = ("train", "val")
HASHES = ["sha1"]  # each shard's hash in index.json: the index then pins the shards' contents
# Streaming's default shard size: the writer holds one shard's samples in memory, so this (not the
# input's size) bounds stream-shard's memory.
SHARD_SIZE_LIMIT = 1 << 26


def split_indices(n: int, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """A seeded permutation cut into val (first) and train; both sorted to keep source order."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0:
        n_val = max(n_val, 1)
    return {"val": np.sort(order[:n_val]), "train": np.sort(order[n_val:])}


def pack_rows(docs: Ragged, idx: np.ndarray, codec: Codec, seq_len: int) -> Iterator[np.ndarray]:
    """Rows of `seq_len` tokens cut from the stream [bos] doc [eos] of the docs in `idx`, in order
    (the remainder is dropped); one row's worth of documents in memory at a time."""
    bos, eos = np.array([codec.ids["bos"]], np.int32), np.array([codec.ids["eos"]], np.int32)
    pending: list[np.ndarray] = []
    size = 0
    for i in idx:
        pending += [bos, np.asarray(docs[i]), eos]
        size += len(docs[i]) + 2
        if size >= seq_len:
            stream = np.concatenate(pending)
            rows = len(stream) // seq_len
            yield from stream[: rows * seq_len].reshape(rows, seq_len)
            pending, size = [stream[rows * seq_len:]], len(stream) - rows * seq_len


def pack_text(docs: Ragged, idx: np.ndarray, codec: Codec, seq_len: int) -> np.ndarray:
    """All of `pack_rows` as one (rows, seq_len) array."""
    rows = list(pack_rows(docs, idx, codec, seq_len))
    return np.stack(rows) if rows else np.zeros((0, seq_len), np.int32)


def _samples(name: str, source: Ragged, idx: np.ndarray, codec: Codec, raw_dir: Path, seq_len: int):
    if name == "text":
        for row in pack_rows(source, idx, codec, seq_len):
            yield {"tokens": row, "mask": np.ones_like(row, dtype=np.uint8), "image": b""}
        return
    for i in idx:
        image = source.images[i]
        if name == "captions":
            ids, mask = codec.caption(source[i].tolist())
        else:
            ids, mask = source[i], source.mask_of(i)
        yield {
            "tokens": np.asarray(ids, dtype=np.int32),
            "mask": np.asarray(mask, dtype=np.uint8),
            "image": (raw_dir / image).read_bytes() if image else b"",
        }


def write_shards(
    sources: dict[str, Ragged], codec: Codec, raw_dir: Path, out_dir: Path, seq_len: int, val_fraction: float,
    seed: int, log=print, remote: str | None = None,
) -> dict:
    """Write out_dir/{source}/{split}/ MDS datasets (also uploaded to `remote`/{source}/{split} when
    given); returns per-split statistics."""
    stats: dict = {}
    for k, name in enumerate(SOURCES):
        splits = split_indices(len(sources[name]), val_fraction, seed + k)
        for split in SPLITS:
            n, tokens, images = 0, 0, 0
            out = str(out_dir / name / split)
            if remote:  # written here and uploaded as each shard is finished
                out = (out, f"{remote.rstrip('/')}/{name}/{split}")
            with MDSWriter(out=out, columns=COLUMNS, compression=None, hashes=HASHES, keep_local=True,
                           size_limit=SHARD_SIZE_LIMIT) as writer:
                for sample in _samples(name, sources[name], splits[split], codec, raw_dir, seq_len):
                    writer.write(sample)
                    n += 1
                    tokens += len(sample["tokens"])
                    images += bool(sample["image"])
            if n == 0:
                raise ValueError(
                    f"source `{name}`: the {split} split is empty (records: {len(sources[name])}, seq_len "
                    f"{seq_len}, val_fraction {val_fraction}); add data or change shard.seq_len / shard.val_fraction"
                )
            stats[f"{name}/{split}"] = {
                "samples": n,
                "tokens": tokens,  # with the format's special tokens, one placeholder per image
                "images": images,
                "mean_tokens": tokens / n if n else 0.0,
            }
            log(f"  {name}/{split}: {n} samples, {tokens} tokens, {images} images")
    return stats
