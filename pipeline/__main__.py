"""`python -m pipeline STAGE`: check params.yaml, then run one DVC stage (the `cmd` of dvc.yaml).

The params check imports no torch, so a typo or a bad value fails in well under a second, naming
the key, before any stage module (and its heavy imports) is loaded.
"""

from __future__ import annotations

import importlib
import sys

from vlm.config import ParamError, load

# DVC stage name -> the module whose `run(cfg)` does its work
STAGES = {
    "prepare": "pipeline.prepare",
    "tokenize": "pipeline.tokenize_sources",
    "stream-shard": "pipeline.stream_shard",
    "train-encoder": "pipeline.train_encoder",
    "encode-images": "pipeline.encode_images",
    "text-pretrain": "pipeline.text_pretrain",
    "branch-at-fraction": "pipeline.branch",
    "mixed-cooldown": "pipeline.cooldown",
    "finetune": "pipeline.finetune",
    "evaluate": "pipeline.evaluate",
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in STAGES:
        print(f"usage: python -m pipeline STAGE, STAGE one of: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    try:
        cfg = load()
    except ParamError as e:
        print(f"{argv[0]}: bad params, nothing was run:\n{e}", file=sys.stderr)
        return 2
    importlib.import_module(STAGES[argv[0]]).run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
