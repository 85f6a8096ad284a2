"""DVC stage `tokenize`: train (or load) the BPE tokenizer and encode every source.

Reads data/raw (from `prepare`), writes data/tokens/ and metrics/tokens.json.
"""

from __future__ import annotations

import os
import time

from pipeline.paths import INPUT_TOKENIZER, METRICS, RAW, TOKENS
from vlm.config import Config
from vlm.data import readers
from vlm.data.tokenizer import Codec, load_tokenizer, train_tokenizer
from vlm.data.tokens import encode_sources, token_counts
from vlm.io import atomic_dir, write_json


def run(cfg: Config) -> None:
    t0 = time.time()
    if cfg.tokenize.tokenizer:
        print(f"tokenize: loading {cfg.tokenize.tokenizer} ({INPUT_TOKENIZER}/); its vocabulary sets the LM's",
              flush=True)
        tok = load_tokenizer(cfg.tokenize.tokenizer)
    else:
        print(f"tokenize: training byte-level BPE, vocab {cfg.tokenize.vocab_size}, on {RAW / 'text.jsonl'} ...",
              flush=True)
        tok = train_tokenizer(readers.iter_text(RAW / "text.jsonl"), cfg.tokenize.vocab_size, show_progress=False)
    codec = Codec(tok)

    print("tokenize: checking and encoding the sources, a batch of records at a time ...", flush=True)
    texts = readers.iter_text(RAW / "text.jsonl")
    captions = ((os.path.relpath(img, RAW), cap) for img, cap in readers.iter_captions(RAW / "captions.jsonl"))
    convs = readers.iter_llava(RAW / "instruct.json")
    with atomic_dir(TOKENS) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        counts = token_counts(encode_sources(codec, texts, captions, convs, tmp))
    counts["vocab_size"] = codec.vocab_size
    write_json(METRICS / "tokens.json", counts)
    summary = ", ".join(f"{k} {v['records']} records / {v['tokens']} tokens" for k, v in counts.items()
                        if isinstance(v, dict))
    print(f"tokenize: done in {time.time() - t0:.1f}s; {summary}", flush=True)
