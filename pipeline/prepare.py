"""DVC stage `prepare`: write data/raw/, the inputs every later stage reads (design.md, "prepare").

`prepare.source: synthetic` generates the embedded world (docs/world.md); `files` reads the user's
own sources under inputs/data/ (params `prepare.files`), skips and counts bad records, and writes
them in the same layout (vlm/data/ingest.py). Counts go to metrics/prepare.json.
"""

from __future__ import annotations

import time

from pipeline.paths import INPUT_DATA, METRICS, RAW
from vlm.config import Config
from vlm.data.ingest import resolve, write_files
from vlm.data.world import write_world
from vlm.io import atomic_dir, write_json


def log(msg: str) -> None:
    print(f"prepare: {msg}", flush=True)


def run(cfg: Config) -> None:
    t0 = time.time()
    if cfg.prepare.source == "synthetic":
        log(f"seed {cfg.seed}, writing the synthetic world to {RAW}/")
        counts = write_world(cfg.prepare, cfg.seed, RAW, log=log)
        metrics = {"source": "synthetic", "counts": counts}
        summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    else:
        resolve(cfg.prepare.files)  # every path exists and is readable, before anything is read
        log(f"reading your sources under {INPUT_DATA}/ into {RAW}/ (max bad share per source "
            f"{cfg.prepare.max_bad_fraction})")
        with atomic_dir(RAW) as tmp:
            tallies = write_files(cfg.prepare.files, cfg.prepare.max_bad_fraction, tmp, log=log)
        metrics = {"source": "files",
                   "sources": {k: {"kept": t.kept, "skipped": t.skipped} for k, t in tallies.items()}}
        summary = ", ".join(f"{k} {t.kept} kept / {t.skipped} skipped" for k, t in tallies.items())
    write_json(METRICS / "prepare.json", metrics)
    log(f"done in {time.time() - t0:.1f}s; {summary}")
