"""DVC stage `stream-shard`: write MDS shards per source with a validation split.

Reads data/tokens (from `tokenize`) and the images in data/raw; writes data/shards/ and
metrics/shards.json (samples and tokens per source and split; for instructions, how many were cut
to the context or skipped, vlm/data/fit.py). With `shard.remote` the shards are also uploaded to
<remote>/<content key>/, the key a digest of their indexes (pipeline/paths.py: `shards_key`), with
Streaming's own uploader, and the training stages stream them from there: experiments whose shards
differ never share a path.
"""

from __future__ import annotations

import time

from pipeline.paths import METRICS, RAW, SHARDS, TOKENS, shards_key
from vlm.config import Config
from vlm.data.shards import SOURCES, upload_shards, write_shards
from vlm.data.tokenizer import Codec
from vlm.data.tokens import Ragged
from vlm.io import atomic_dir, write_json


def run(cfg: Config) -> None:
    seq_len, val_fraction = cfg.shard.seq_len, cfg.shard.val_fraction
    t0 = time.time()
    codec = Codec.from_file(TOKENS / "tokenizer.json")
    sources = {name: Ragged.load(TOKENS, name) for name in SOURCES}
    remote = cfg.shard.remote
    print(f"stream-shard: writing MDS shards (seq_len {seq_len}, val {val_fraction:.0%}) ...", flush=True)
    with atomic_dir(SHARDS) as tmp:
        stats = write_shards(sources, codec, RAW, tmp, seq_len, val_fraction, cfg.seed, cfg.shard.image_tokens)
        key = shards_key(tmp)
        if remote:
            where = f"{remote.rstrip('/')}/{key}"
            print(f"stream-shard: uploading the shards to {where} ...", flush=True)
            upload_shards(tmp, where)
        write_json(tmp / "stats.json", stats)
    write_json(METRICS / "shards.json", stats)
    print(f"stream-shard: done in {time.time() - t0:.1f}s (content key {key})", flush=True)
