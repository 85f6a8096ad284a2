"""DVC stage `prepare`: generate the embedded synthetic world into data/raw/ (docs/world.md)."""

from __future__ import annotations

import time

from pipeline.paths import RAW
from vlm.config import Config
from vlm.data.world import write_world


def run(cfg: Config) -> None:
    print(f"prepare: seed {cfg.seed}, writing the synthetic world to {RAW}/", flush=True)
    t0 = time.time()
    counts = write_world(cfg.prepare, cfg.seed, RAW, log=lambda msg: print(f"prepare: {msg}", flush=True))
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"prepare: done in {time.time() - t0:.1f}s; {summary}", flush=True)
