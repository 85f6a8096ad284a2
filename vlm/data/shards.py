"""MosaicML Streaming MDS shards: one dataset per source, each with `train` and `val` splits.

Every sample of every source has the same three columns, so one collator serves any mix:
    tokens  ndarray:int32   the formatted sequence (tokenizer.py), one [image] placeholder at most
    mask    ndarray:uint8   1 where the loss applies (all text tokens, captions, assistant answers)
    image   bytes           the encoded image file (PNG/JPEG) or b"" when the sample has none
Shards are written uncompressed (design.md) and read back by stock `StreamingDataset`.
Instruction conversations longer than the model's context are cut at a turn boundary here (fit.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from streaming import MDSWriter
from streaming.base.storage.upload import CloudUploader

from vlm.config import MAX_SEQ_LEN
from vlm.data.fit import fit_conversation
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


def _samples(name: str, source: Ragged, idx: np.ndarray, codec: Codec, raw_dir: Path, seq_len: int,
             image_tokens: int, fit: dict):
    """The split's samples; instruction ones cut to the context, counted in `fit` (cut, skipped,
    tokens_dropped)."""
    if name == "text":
        for row in pack_rows(source, idx, codec, seq_len):
            yield {"tokens": row, "mask": np.ones_like(row, dtype=np.uint8), "image": b""}
        return
    for i in idx:
        image = source.images[i]
        if name == "captions":
            ids, mask = codec.caption(source[i].tolist())
        else:
            ids, mask = np.asarray(source[i]), np.asarray(source.mask_of(i))
            keep = fit_conversation(ids, mask, codec.ids["eos"], codec.ids["image"], image_tokens, MAX_SEQ_LEN)
            if keep < len(ids):
                fit["skipped" if keep == 0 else "cut"] += 1
                fit["tokens_dropped"] += len(ids) - keep
                if keep == 0:
                    continue
                ids, mask = ids[:keep], mask[:keep]
                if not (ids == codec.ids["image"]).any():
                    image = None  # its placeholder was in a dropped turn
        yield {
            "tokens": np.asarray(ids, dtype=np.int32),
            "mask": np.asarray(mask, dtype=np.uint8),
            "image": (raw_dir / image).read_bytes() if image else b"",
        }


def write_shards(
    sources: dict[str, Ragged], codec: Codec, raw_dir: Path, out_dir: Path, seq_len: int, val_fraction: float,
    seed: int, image_tokens: int, log=print,
) -> dict:
    """Write out_dir/{source}/{split}/ MDS datasets; returns per-split statistics. `image_tokens`: the
    encoder's tokens per image, for the instruction samples' length in the model."""
    stats: dict = {}
    for k, name in enumerate(SOURCES):
        splits = split_indices(len(sources[name]), val_fraction, seed + k)
        for split in SPLITS:
            n, tokens, images = 0, 0, 0
            fit = {"cut": 0, "skipped": 0, "tokens_dropped": 0}
            with MDSWriter(out=str(out_dir / name / split), columns=COLUMNS, compression=None, hashes=HASHES,
                           size_limit=SHARD_SIZE_LIMIT) as writer:
                for sample in _samples(name, sources[name], splits[split], codec, raw_dir, seq_len, image_tokens,
                                       fit):
                    writer.write(sample)
                    n += 1
                    tokens += len(sample["tokens"])
                    images += bool(sample["image"])
            if n == 0:
                skipped = (f", {fit['skipped']} conversations skipped: their first answer does not fit in "
                           f"{MAX_SEQ_LEN} positions with {image_tokens} tokens per image (`shard.image_tokens`)"
                           if fit["skipped"] else "")
                raise ValueError(
                    f"source `{name}`: the {split} split is empty (records: {len(sources[name])}, seq_len "
                    f"{seq_len}, val_fraction {val_fraction}{skipped}); add data or change shard.seq_len / "
                    "shard.val_fraction"
                )
            stats[f"{name}/{split}"] = {
                "samples": n,
                "tokens": tokens,  # with the format's special tokens, one placeholder per image
                "images": images,
                "mean_tokens": tokens / n if n else 0.0,
            }
            if name == "instruct":
                stats[f"{name}/{split}"]["fit"] = fit
            cut = (f"; {fit['cut']} cut to {MAX_SEQ_LEN} positions at a turn boundary, {fit['skipped']} skipped "
                   f"(first answer too long), {fit['tokens_dropped']} tokens dropped"
                   if fit["cut"] or fit["skipped"] else "")
            log(f"  {name}/{split}: {n} samples, {tokens} tokens, {images} images{cut}")
    return stats


def upload_shards(shards_dir: Path, remote: str, log=print) -> int:
    """Copy every {source}/{split} dataset of `shards_dir` to `remote`/{source}/{split} with
    Streaming's uploader (any URL it knows: s3://, gs://, oci://, a folder...). Each split's index
    goes last, so a dataset cut short on the way has no index to be read by. Returns the file count."""
    count = 0
    for split_dir in sorted(p.parent for p in shards_dir.glob("*/*/index.json")):
        rel = split_dir.relative_to(shards_dir).as_posix()
        uploader = CloudUploader.get(out=(str(split_dir), f"{remote.rstrip('/')}/{rel}"), keep_local=True,
                                     exist_ok=True)
        names = sorted(f.name for f in split_dir.iterdir() if f.is_file() and f.name != "index.json")
        for name in [*names, "index.json"]:
            uploader.upload_file(name)
        count += len(names) + 1
        log(f"  uploaded {rel}: {len(names)} shards and index.json")
    return count
