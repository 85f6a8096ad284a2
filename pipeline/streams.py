"""Where the training stages read the shards: data/shards, or their copy on object storage."""

from __future__ import annotations

import hashlib

from pipeline.paths import SHARDS, STREAM_CACHE
from vlm.config import Config
from vlm.training.data import Source


def shards(cfg: Config, name: str) -> Source:
    """Where the training stages read source `name`: data/shards/<name>, or with `shard.remote` its
    uploaded copy, streamed into a local cache keyed by the remote and the shards' index files (which
    hold every shard's sha1), so a changed dataset never reads stale cached shards."""
    if cfg.shard.remote is None:
        return SHARDS / name
    remote = f"{cfg.shard.remote.rstrip('/')}/{name}"
    h = hashlib.sha256(remote.encode())
    for index in sorted((SHARDS / name).glob("*/index.json")):  # one per split
        h.update(index.read_bytes())
    return STREAM_CACHE / h.hexdigest()[:16] / name, remote
