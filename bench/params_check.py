"""How fast a bad params file is refused: `python -m pipeline.check_params` as a user runs it, on the
committed params.yaml and on one-edit copies of it that each break one rule (a type, an unknown key,
a range, a rule that ties keys together). Each must fail naming its key; the figure is the wall time
of each call, interpreter start-up included (the claim: a bad param fails in well under a second,
before torch is imported).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.study import set_dotted

ROOT = Path(__file__).resolve().parents[1]

# (case, dotted key, value): each breaks the committed file in one place.
CASES = [
    ("boolean as text", "vision.blank_images", "false"),
    ("integer as a float", "pretrain.steps", 10.5),
    ("unknown key", "cooldown.lr", 0.1),
    ("out of range", "cooldown.image_ratio", 1.5),
    ("not a choice", "model.preset", "7b"),
    ("not a branch point", "branch.fraction", 0.5),
    ("ratios above 1", "cooldown.instruct_ratio", 0.9),
    ("missing file", "tokenize.tokenizer", "inputs/tokenizer/none.json"),
]


def _call(path: Path) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.check_params", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    return proc, time.perf_counter() - t0


def measure(work: Path, quick: bool = False) -> dict:
    """{"good_seconds", "cases": [{case, key, seconds, message}], "max_bad_seconds"}."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    good, good_seconds = _call(ROOT / "params.yaml")
    if good.returncode != 0:
        raise RuntimeError(f"the committed params.yaml does not pass its check:\n{good.stderr}")
    cases = []
    for name, key, value in CASES[:2] if quick else CASES:
        path = work / f"{name.replace(' ', '-')}.yaml"
        edited = copy.deepcopy(raw)
        set_dotted(edited, key, value)
        path.write_text(yaml.safe_dump(edited, sort_keys=False))
        proc, seconds = _call(path)
        if proc.returncode != 1 or f"`{key}`" not in proc.stderr:
            raise RuntimeError(f"{name}: expected a refusal naming `{key}`, got ({proc.returncode}):\n{proc.stderr}")
        cases.append({"case": name, "key": key, "seconds": round(seconds, 3),
                      "message": proc.stderr.splitlines()[0].removeprefix(f"{path}: ")})
    return {"good_seconds": round(good_seconds, 3), "cases": cases,
            "max_bad_seconds": max(c["seconds"] for c in cases)}
