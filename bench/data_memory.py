"""`python -m bench.data_memory [SCALE ...]`: peak memory of the data stages as the input grows.

For each scale (default 1 and 10) it generates the embedded world at that multiple of params.yaml's
`prepare` sizes, spreads it over the user formats (tests/userdata.py's layout), and runs prepare
(`source: files`), tokenize and stream-shard on it in this process, printing for each stage the
peak of Python's traced allocations (tracemalloc: numpy buffers included) and the process's peak
RSS. Memory that stays flat from 1x to 10x is what "readers iterate" means; the ratio is printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = ("n_text_docs", "n_images", "n_instruct")


@contextmanager
def in_folder(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def measure(scale: int, work: Path) -> dict[str, dict]:
    """{stage: {peak_traced_mb, seconds}} of prepare (files), tokenize and stream-shard at `scale`."""
    sys.path.insert(0, str(ROOT / "tests"))
    from userdata import write_every_format

    from pipeline import prepare, stream_shard, tokenize_sources
    from vlm.config import build, load
    from vlm.data.world import write_world

    cfg = load(ROOT / "params.yaml")
    world_cfg = dataclasses.replace(cfg.prepare, **{k: getattr(cfg.prepare, k) * scale for k in SIZES})
    write_world(world_cfg, cfg.seed, work / "world")
    files = write_every_format(work / "world", work / "repo/inputs/data", base="inputs/data")
    errors: list[str] = []
    files_cfg = build(type(cfg.prepare.files), files, "prepare.files.", errors)
    cfg = dataclasses.replace(cfg, prepare=dataclasses.replace(cfg.prepare, source="files", files=files_cfg))
    out = {}
    with in_folder(work / "repo"):
        for name, stage in (("prepare", prepare), ("tokenize", tokenize_sources), ("stream-shard", stream_shard)):
            tracemalloc.start()
            t0 = time.perf_counter()
            stage.run(cfg)
            seconds = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            out[name] = {"peak_traced_mb": round(peak / 2**20, 2), "seconds": round(seconds, 2)}
        tokens = json.loads(Path("metrics/tokens.json").read_text())
        out["records"] = tokens["text"]["records"]
        out["all_records"] = sum(tokens[source]["records"] for source in ("text", "captions", "instruct"))
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main(argv: list[str]) -> int:
    """Scales as arguments; `--shard-mb N` sets the shard size limit (Streaming's default: 64).
    Each scale runs in a fresh process, so one scale's allocations and caches cannot count in another's."""
    shard_mb = None
    if "--shard-mb" in argv:
        i = argv.index("--shard-mb")
        shard_mb, argv = int(argv[i + 1]), argv[:i] + argv[i + 2:]
    if argv and argv[0] == "--one":  # the child: one scale, results as JSON on the last line
        if shard_mb is not None:
            from vlm.data import shards

            shards.SHARD_SIZE_LIMIT = shard_mb << 20
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(measure(int(argv[1]), Path(tmp))))
        return 0
    scales = [int(a) for a in argv] or [1, 10]
    results = {s: run_scale(s, shard_mb) for s in scales}
    print(report(results))
    return 0


def run_scale(scale: int, shard_mb: int | None = None) -> dict:
    extra = ["--shard-mb", str(shard_mb)] if shard_mb is not None else []
    proc = subprocess.run([sys.executable, "-m", "bench.data_memory", *extra, "--one", str(scale)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(results: dict[int, dict]) -> str:
    scales = list(results)
    lines = [f"{'stage':<14}" + "".join(f"{f'{s}x peak MB':>14}" for s in scales) + f"{'ratio':>8}"]
    for stage in ("prepare", "tokenize", "stream-shard"):
        peaks = [results[s][stage]["peak_traced_mb"] for s in scales]
        lines.append(f"{stage:<14}" + "".join(f"{p:>14.2f}" for p in peaks) + f"{peaks[-1] / peaks[0]:>8.2f}")
    lines.append("text records: " + ", ".join(f"{s}x {results[s]['records']}" for s in scales))
    lines.append("records (documents, captions, conversations): "
                 + ", ".join(f"{s}x {results[s]['all_records']}" for s in scales))
    lines.append("peak RSS of the process, MB: " + ", ".join(f"{s}x {results[s]['peak_rss_mb']}" for s in scales))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
