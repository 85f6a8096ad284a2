"""Throughput of the data stages at a multiple of the embedded world (issue 9, item 4).

In a temporary folder: prepare (synthetic, `scale` x params.yaml's sizes), tokenize and stream-shard
run as the DVC stages do, each timed. Then, on what they wrote:

- **tokenize**: our encoding path (`encode_sources`: batches, the on-disk token writer) against
  `tokenizers`' own `Tokenizer.encode_batch` on the same texts held in memory (documents/s).
- **MDS write**: stream-shard's samples/s and MB/s, all sources and splits.
- **Streaming read**: the cooldown's stratified mix of text and caption streams (the default
  `cooldown.image_ratio`) through StreamingDataLoader and our collator, images decoded and
  preprocessed to the tiny encoder's input size (samples/s); to be set against the training
  consumption rate that `python -m bench` measures in the same run.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

from bench.data_memory import in_folder
from vlm.config import Config

PREPARE_SIZES = ("n_text_docs", "n_images", "n_instruct")


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def tokenize_rates(texts: list[str], tokenizer_file: Path, work: Path, repeats: int = 2) -> dict:
    """Documents/s of our path and of `encode_batch`, best of `repeats`."""
    from tokenizers import Tokenizer

    from vlm.data.tokenizer import Codec
    from vlm.data.tokens import encode_sources

    codec, tok = Codec.from_file(tokenizer_file), Tokenizer.from_file(str(tokenizer_file))
    for r in range(repeats):
        (work / f"t{r}").mkdir(parents=True)
    ours = min(_timed(encode_sources, codec, iter(texts), (), (), work / f"t{r}") for r in range(repeats))
    theirs = min(_timed(functools.partial(tok.encode_batch, add_special_tokens=False), texts)
                 for _ in range(repeats))
    return {"docs": len(texts), "ours_docs_per_sec": len(texts) / ours,
            "encode_batch_docs_per_sec": len(texts) / theirs, "ours_over_encode_batch": theirs / ours}


def read_rate(cfg: Config, shards: Path, samples: int, features=None) -> dict:
    """Samples/s of the cooldown's text + caption mix, collated with images preprocessed (or, with a
    `features` store, looked up)."""
    from streaming import StreamingDataLoader

    from pipeline.cooldown import batch_mix
    from vlm.data.batches import Collator
    from vlm.data.tokenizer import Codec
    from vlm.io import read_json
    from vlm.model.vision import image_tensor
    from vlm.training.data import mixed_dataset

    size = cfg.prepare.image_size
    n_img = (size // cfg.vision.tiny.patch_size) ** 2
    _, counts = batch_mix(cfg.cooldown, read_json(shards / "stats.json"), n_img)
    b = cfg.cooldown.batch_size
    ds = mixed_dataset({shards / k: n for k, n in counts.items()}, "train", b, cfg.seed, samples)
    pp = {"size": size, "mean": [0.5] * 3, "std": [0.5] * 3}
    ids = Codec.from_file(shards.parent / "tokens/tokenizer.json").ids  # the tokenizer tokenize wrote
    collate = Collator(ids, n_img, functools.partial(image_tensor, preprocess_cfg=pp), features=features)
    dl = StreamingDataLoader(ds, batch_size=b, collate_fn=collate, num_workers=0)
    t0, n = time.perf_counter(), 0
    for batch in dl:
        n += batch["input_ids"].shape[0]
    return {"samples": n, "batch_counts": counts, "samples_per_sec": n / (time.perf_counter() - t0)}


def measure(cfg: Config, scale: int, work: Path, read_samples: int | None = None) -> dict:
    """Every figure above for the world at `scale` x params.yaml's sizes, built under `work`; the read
    covers `read_samples` (default: one cooldown's worth)."""
    from pipeline import prepare, stream_shard, tokenize_sources
    from vlm.data import readers
    from vlm.io import read_json

    sizes = {k: getattr(cfg.prepare, k) * scale for k in PREPARE_SIZES}
    cfg = dataclasses.replace(cfg, prepare=dataclasses.replace(cfg.prepare, **sizes))
    work.mkdir(parents=True, exist_ok=True)
    with in_folder(work):
        seconds = {name: _timed(stage.run, cfg) for name, stage in
                   (("prepare", prepare), ("tokenize", tokenize_sources), ("stream-shard", stream_shard))}
        shards = Path("data/shards")
        files = sum(1 for _ in shards.glob("*/*/shard.*.mds"))
        written = sum(s["samples"] for s in read_json(shards / "stats.json").values())
        texts = list(readers.iter_text(Path("data/raw/text.jsonl")))
        out = {
            "scale": scale, "sizes": sizes, "stage_seconds": seconds,
            "tokenize": tokenize_rates(texts, Path("data/tokens/tokenizer.json"), Path("bench_tokens")),
            "mds_write": {"samples": written, "shard_files": files, "mb": _folder_mb(shards),
                          "samples_per_sec": written / seconds["stream-shard"],
                          "mb_per_sec": _folder_mb(shards) / seconds["stream-shard"]},
            "streaming_read": read_rate(cfg, shards, read_samples or cfg.cooldown.steps * cfg.cooldown.batch_size),
        }
    return out
