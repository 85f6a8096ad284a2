"""Two pipelines on one machine at once: `dvc repro` in two repositories started together, one of them
with two training processes (Composer's launcher, gloo). Every Streaming user first removes the shared
memory that no live process holds (vlm/training/shared_memory.py), so neither run breaks the other's
datasets, nor a dataset that the test itself holds beside them, and each ends with the results it has
when run alone. So that the two really overlap on any machine, the first run is paused (SIGSTOP) while
its datasets are live until the second has live datasets too: the second run's clean-ups then meet
live segments of the first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import pytest
from dvcrepo import env_for, make_repo, run
from shm_segments import prefix, reading_prefixes, segments, streaming_names
from streaming import MDSWriter, StreamingDataset

from vlm.training.shared_memory import stale_segments

pytestmark = pytest.mark.slow

# The stages that read shards through Streaming, and those after them: rerun alone for the reference
AFTER_SHARDS = ["train-encoder", "encode-images", "text-pretrain", "branch-at-fraction", "mixed-cooldown",
                "finetune", "evaluate"]


def start(repo: Path, tmp: Path) -> subprocess.Popen:
    return subprocess.Popen(["dvc", "repro"], cwd=repo, env=env_for(repo, TMPDIR=str(tmp)), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def process_tree(pid: int) -> list[int]:
    """pid and its live descendants, parents first (from the ppid field of /proc/PID/stat)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        with suppress(OSError, ValueError, IndexError):
            if entry.name.isdigit():
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    tree = [pid]
    for p in tree:
        tree.extend(c for c, pp in sorted(parent.items()) if pp == p)
    return tree


def signal_tree(pid: int, sig: int) -> None:
    for p in process_tree(pid):
        with suppress(ProcessLookupError):
            os.kill(p, sig)


def ours(before: set[str], seen: set[str], repos: dict[str, Path]) -> set[str]:
    """The stale Streaming segments made since `before` by the runs in `repos`: of a prefix seen
    reading under them, or whose `_locals` names them (other runs on the machine are not ours)."""
    runs = seen | set().union(*reading_prefixes(repos).values())
    return {n for n in (streaming_names() - before) & set(stale_segments()) if prefix(n) in runs}


def results(repo: Path) -> dict:
    return {
        "tasks": json.loads((repo / "metrics/eval.json").read_text())["tasks"],
        "val_loss": json.loads((repo / "metrics/pretrain.json").read_text())["val_loss"],
        "curves": {p.name: p.read_text() for p in sorted((repo / "logs").glob("*.csv"))},
        "dvc.lock": (repo / "dvc.lock").read_text(),  # every output's hash: weights, metrics, curves
    }


def test_two_pipelines_at_once_finish_with_the_results_each_has_alone(tmp_path, monkeypatch):
    repos = {"one": make_repo(tmp_path / "one", **{"cooldown.steps": 4}),
             "two": make_repo(tmp_path / "two", **{"cooldown.steps": 4, "train.nproc": 2})}
    # A temporary folder of their own, as on a fresh machine: Streaming's filelocks there (never removed)
    # make new datasets skip their prefixes, and a clean-up from prefix 0 up that stops at the first
    # prefix without segments (Streaming's own) would never reach datasets above old filelocks' prefixes.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    # a dataset of this process, live throughout (as a test beside a running study): never removed
    with MDSWriter(out=str(tmp_path / "bystander/train"), columns={"x": "int"}) as writer:
        for i in range(8):
            writer.write({"x": i})
    before = streaming_names()
    bystander = StreamingDataset(local=str(tmp_path / "bystander"), split="train", batch_size=2)
    prefixes = reading_prefixes({"bystander": tmp_path / "bystander"})["bystander"]
    held = segments(prefixes)
    assert held and set(held) <= streaming_names() - before

    procs = {name: start(repo, tmp) for name, repo in repos.items()}
    together, paused, deadline, seen = False, None, time.monotonic() + 1800, set()
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        live = reading_prefixes(repos)
        seen |= set().union(*live.values())
        together = together or all(live.values())
        if not together and paused is None and live["one"] and procs["two"].poll() is None:
            signal_tree(procs["one"].pid, signal.SIGSTOP)  # held live until "two" has datasets too
            paused = time.monotonic()
        if paused and (together or procs["two"].poll() is not None or time.monotonic() - paused > 600):
            signal_tree(procs["one"].pid, signal.SIGCONT)
            paused = 0.0  # once only
        time.sleep(0.2)
    if paused:
        signal_tree(procs["one"].pid, signal.SIGCONT)
    out = {}
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.kill()
        out[name] = proc.communicate()[0]
        assert proc.returncode == 0, f"{name}: dvc repro failed ({proc.returncode}):\n{out[name][-6000:]}"
    assert "composer -n 2 -m pipeline text-pretrain" in out["two"]
    assert "composer -n 1 -m pipeline text-pretrain" in out["one"]
    assert together, "the two runs never had Streaming datasets live at the same time"
    left = ours(before, seen, repos)
    assert not left, f"Streaming shared memory left behind by the runs: {sorted(left)}"
    assert segments(prefixes) == held, "the runs removed the shared memory of a live dataset"
    assert len(list(bystander)) == 8
    del bystander

    at_once = {name: results(repo) for name, repo in repos.items()}
    for name, repo in repos.items():  # the same stages again, each run alone
        run(repo, "dvc", "repro", "--force", "--single-item", *AFTER_SHARDS, env={"TMPDIR": str(tmp)})
        alone = results(repo)
        for key in alone:
            assert at_once[name][key] == alone[key], f"{name}: {key} differs from the run alone"
    assert not ours(before, seen, repos)
