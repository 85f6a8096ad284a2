"""Temporary git + DVC copies of this repository with a tiny params file, for the end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
                "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}  # `dvc exp` commits
STAGES = ["prepare", "tokenize", "stream-shard", "train-encoder", "encode-images", "text-pretrain",
          "branch-at-fraction", "mixed-cooldown", "finetune", "evaluate"]

TINY = {
    "prepare": {"n_text_docs": 120, "n_creatures": 8, "n_instruct_creatures": 2, "n_images": 120,
                "n_instruct": 120, "n_eval": 40},
    "tokenize": {"vocab_size": 400},
    "shard": {"seq_len": 32},
    "vision": {"tiny": {"width": 32, "layers": 2, "heads": 2, "embed_dim": 32, "steps": 4, "batch_size": 16}},
    "pretrain": {"steps": 10, "batch_size": 4, "warmup_steps": 2},
    "cooldown": {"steps": 6, "batch_size": 32, "warmup_steps": 2},
    "finetune": {"epochs": 1, "batch_size": 16, "warmup_steps": 2},
    "evaluate": {"batch_size": 32},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def env_for(cwd: Path, **extra: str) -> dict[str, str]:
    """The environment of a command run in the repository `cwd`: this venv first, its code importable."""
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(cwd), **GIT_IDENTITY, **extra}


def run(cwd: Path, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env_for(cwd, **(env or {})), capture_output=True, text=True)
    if check and proc.returncode != 0:
        out = f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}")
    return proc


def set_params(repo: Path, **dotted) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in dotted.items():
        node = params
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@contextmanager
def changed_params(repo: Path, **dotted):
    """params.yaml with some values changed, restored afterwards."""
    original = (repo / "params.yaml").read_text()
    try:
        set_params(repo, **dotted)
        yield
    finally:
        (repo / "params.yaml").write_text(original)


def make_repo(dst: Path, **overrides) -> Path:
    """A git + DVC copy of the tracked sources with the tiny params and no products."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel == "dvc.lock" or rel.startswith(("metrics/", "logs/")) or not (ROOT / rel).is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if overrides:
        set_params(dst, **overrides)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
    return dst


def would_run(repo: Path) -> list[str]:
    out = run(repo, "dvc", "repro", "--dry").stdout
    return [s for s in STAGES if f"Running stage '{s}'" in out]


def ran(proc: subprocess.CompletedProcess) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` ran, in order."""
    return [s for s in STAGES if f"Running stage '{s}'" in proc.stdout]


def csv_column(path: Path, column: str) -> dict[int, float]:
    """{step: value} of one column of a curve CSV (empty cells left out)."""
    import csv

    with path.open() as f:
        return {int(r["step"]): float(r[column]) for r in csv.DictReader(f) if r.get(column)}
