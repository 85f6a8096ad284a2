"""Where each stage's products live (the `outs` of dvc.yaml). No heavy imports here."""

from pathlib import Path

from vlm.config import USER_DATA, USER_ENCODER, USER_TOKENIZER
from vlm.io import files_digest

# The user's own files (README, "Bring your own data"): each folder a DVC dep of the stage reading it.
INPUT_DATA, INPUT_TOKENIZER, INPUT_ENCODER = Path(USER_DATA), Path(USER_TOKENIZER), Path(USER_ENCODER)

RAW = Path("data/raw")
TOKENS = Path("data/tokens")
SHARDS = Path("data/shards")
ENCODER = Path("data/encoder")
FEATURES = Path("data/features")  # cached frozen-encoder features (encode-images)
PRETRAIN = Path("data/pretrain")
BRANCH = Path("data/branch")
COOLDOWN = Path("data/cooldown")
FINETUNE = Path("data/finetune")
METRICS = Path("metrics")
LOGS = Path("logs")
# Wall-clock measurements (seconds, tokens/s): not DVC outputs and not in git, so results that
# the params and seed determine stay bit-identical from run to run (design.md).
TIMINGS = Path("timings")
# Each split's MDS index under data/shards: it holds every shard's sha1, so a digest of the indexes
# names the shards' contents. `shard.remote` keeps the shards under <remote>/<digest>/, and
# Streaming's local copies of them (not a DVC output, not in git) sit in <STREAM_CACHE>/<digest>/.
SHARD_INDEXES = "*/*/index.json"
STREAM_CACHE = Path("cache/streams")


def shards_key(shards_dir: Path = SHARDS) -> str:
    """The shards' content as a short key: the digest of their MDS indexes (each shard's sha1)."""
    return files_digest(shards_dir, SHARD_INDEXES)[:16]
