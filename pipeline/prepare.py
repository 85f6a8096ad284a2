"""DVC stage `prepare`: generate the embedded synthetic world into data/raw/ (docs/world.md).

Reads `seed` and `prepare.*` from params.yaml; all of them are checked before anything is written.
"""

from __future__ import annotations

import time
from pathlib import Path

from vlm import params as P
from vlm.data.world import world_config, write_world

OUT = Path("data/raw")


def main() -> None:
    params = P.load()
    cfg = world_config(params)
    print(f"prepare: seed {cfg.seed}, writing the synthetic world to {OUT}/", flush=True)
    t0 = time.time()
    counts = write_world(params, OUT, log=lambda msg: print(f"prepare: {msg}", flush=True))
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"prepare: done in {time.time() - t0:.1f}s; {summary}", flush=True)


if __name__ == "__main__":
    main()
