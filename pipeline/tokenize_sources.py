"""DVC stage `tokenize`: train (or load) the BPE tokenizer and encode every source.

Reads data/raw (from `prepare`), writes data/tokens/ and metrics/tokens.json.
"""

from __future__ import annotations

import os
import time

from pipeline.paths import METRICS, RAW, TOKENS
from vlm.config import Config
from vlm.data import readers
from vlm.data.tokenizer import Codec, load_tokenizer, train_tokenizer
from vlm.data.tokens import encode_sources, token_counts
from vlm.io import atomic_dir, write_json


def run(cfg: Config) -> None:
    t0 = time.time()
    print("tokenize: reading and checking sources ...", flush=True)
    texts = readers.read_text(RAW / "text.jsonl")
    captions = [(os.path.relpath(img, RAW), cap) for img, cap in readers.read_captions(RAW / "captions.jsonl")]
    convs = readers.read_llava(RAW / "instruct.json")
    print(f"  {len(texts)} documents, {len(captions)} captions, {len(convs)} conversations", flush=True)

    if cfg.tokenize.tokenizer:
        print(f"tokenize: loading {cfg.tokenize.tokenizer}", flush=True)
        tok = load_tokenizer(cfg.tokenize.tokenizer)
    else:
        print(f"tokenize: training byte-level BPE, vocab {cfg.tokenize.vocab_size} ...", flush=True)
        tok = train_tokenizer(texts, cfg.tokenize.vocab_size, show_progress=False)
    codec = Codec(tok)

    print("tokenize: encoding sources ...", flush=True)
    sources = encode_sources(codec, texts, captions, convs)
    with atomic_dir(TOKENS) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        for name, ragged in sources.items():
            ragged.save(tmp, name)
    counts = token_counts(sources)
    counts["vocab_size"] = codec.vocab_size
    write_json(METRICS / "tokens.json", counts)
    summary = ", ".join(f"{k} {v['tokens']}" for k, v in counts.items() if isinstance(v, dict))
    print(f"tokenize: done in {time.time() - t0:.1f}s; tokens: {summary}", flush=True)
