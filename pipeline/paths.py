"""Where each stage's products live (the `outs` of dvc.yaml). No heavy imports here."""

from pathlib import Path

from vlm.config import USER_DATA, USER_ENCODER, USER_TOKENIZER

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
# Local copies of shards streamed from `shard.remote` (Streaming's cache), keyed by the shards'
# index (whose sha1 of every shard makes it content-addressed). Not a DVC output, not in git.
STREAM_CACHE = Path("cache/streams")
