"""Where the training stages read the shards: data/shards, or their copy on object storage."""

from __future__ import annotations

from pipeline.paths import SHARDS, STREAM_CACHE, shards_key
from vlm.config import Config
from vlm.training.data import Source


def shards(cfg: Config, name: str) -> Source:
    """Where the training stages read source `name`: data/shards/<name>, or with `shard.remote` the
    copy stream-shard uploaded to <remote>/<content key>/<name>, streamed into a local cache under
    the same key and checked shard by shard against the index's sha1 (vlm/training/data.py). Two
    experiments with other shards on the same remote never read each other's."""
    if cfg.shard.remote is None:
        return SHARDS / name
    key = shards_key()
    return STREAM_CACHE / key / name, f"{cfg.shard.remote.rstrip('/')}/{key}/{name}"
