"""`python -m pipeline STAGE`: check params.yaml, then run one DVC stage (the `cmd` of dvc.yaml).

The params check imports no torch, so a typo or a bad value fails in well under a second, naming
the key, before any stage module (and its heavy imports) is loaded.
"""

from __future__ import annotations

import importlib
import os
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

# The stages dvc.yaml starts under Composer's launcher (`composer -n ${train.nproc}`); the others run
# as one process. On several machines the rendezvous variables (README, "Run at scale") are exported
# for the launcher: a one-process stage drops them, else its Composer Trainer (train-encoder) would
# wait for ranks that never come.
LAUNCHED = ("text-pretrain", "mixed-cooldown", "finetune", "evaluate")
RENDEZVOUS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in STAGES:
        print(f"usage: python -m pipeline STAGE, STAGE one of: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    try:
        cfg = load()
    except ParamError as e:
        print(f"{argv[0]}: bad params, nothing was run:\n{e}", file=sys.stderr)
        return 2
    if argv[0] not in LAUNCHED:
        for key in RENDEZVOUS:
            os.environ.pop(key, None)
    importlib.import_module(STAGES[argv[0]]).run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
