"""`python -m pipeline.check_params [FILE] [--size]`: check a params file (default params.yaml) in a second.

Prints every problem, each naming its dotted key, and exits 1; prints a one-line summary and
exits 0 when the file is good. No stage runs and nothing is written. `--size` also builds the LM
of `model.preset` on PyTorch's meta device (shapes only) and prints its parameter count, at the
vocabulary of `tokenize.tokenizer` (plus our special tokens) or else `tokenize.vocab_size`.
"""

from __future__ import annotations

import sys

from vlm.config import ALL_KEYS, MAX_SEQ_LEN, PARAMS_FILE, Config, ParamError, load


def vocab_of(cfg: Config) -> int:
    """The LM's vocabulary: the given tokenizer's with our special tokens added, or the BPE's size."""
    if cfg.tokenize.tokenizer is None:
        return cfg.tokenize.vocab_size
    from vlm.data.tokenizer import Codec, load_tokenizer

    return Codec(load_tokenizer(cfg.tokenize.tokenizer)).vocab_size


def size_line(cfg: Config) -> str:
    import torch

    from vlm.model.lm import LM, lm_config, num_params

    vocab = vocab_of(cfg)
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        lm = LM(lm_config(cfg.model.preset, vocab, MAX_SEQ_LEN))
    total, body = num_params(lm), num_params(lm, exclude_embeddings=True)
    return (f"model.preset {cfg.model.preset}: {total:,} parameters ({body:,} without the input and output "
            f"embeddings) at a vocabulary of {vocab:,}")


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--size"]
    path = args[0] if args else PARAMS_FILE
    try:
        cfg = load(path)
    except ParamError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{path}: ok ({sum('[]' not in k for k in ALL_KEYS)} params and sections checked)")
    if "--size" in argv:
        print(size_line(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
