"""The rehearsal (params/rehearsal.yaml): every stage at the real run's shapes and formats, tiny width.

`python -m pipeline.rehearsal` writes the inputs (DataComp shards, LLaVA JSON with long chats,
VQAv2, POPE, ARC Parquet, gzip'd where the real sets are); `dvc repro` then runs the whole DAG with
2048-token sequences and 729 tokens per image. What a real run would crash on in its first hour
(a conversation longer than the context, a format the readers miss, shapes that only appear at
2048 positions, a checkpoint mid-stage) it meets here, in minutes.
"""

from __future__ import annotations

import json
import math
import shutil
import time

import pytest
import yaml
from dvcrepo import ROOT, STAGES, make_repo, ran, run

from pipeline.rehearsal import LONG_CHATS

pytestmark = pytest.mark.slow


def test_the_rehearsal_runs_every_stage_at_real_shapes(tmp_path):
    repo = make_repo(tmp_path / "repo")
    shutil.copy2(ROOT / "params/rehearsal.yaml", repo / "params.yaml")
    run(repo, "python", "-m", "pipeline.rehearsal")
    t0 = time.time()
    proc = run(repo, "dvc", "repro")
    print(f"rehearsal: every stage in {time.time() - t0:.0f} s")
    assert ran(proc) == STAGES

    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["shard"]["seq_len"] == 2048 and params["shard"]["image_tokens"] == 729
    prepared = json.loads((repo / "metrics/prepare.json").read_text())
    assert prepared["source"] == "files" and all(s["skipped"] == 0 for s in prepared["sources"].values())

    # the long chats: all but the last cut at a turn boundary, the last (first answer too long) skipped
    shards = json.loads((repo / "metrics/shards.json").read_text())
    fit = {k: sum(shards[f"instruct/{split}"]["fit"][k] for split in ("train", "val"))
           for k in ("cut", "skipped", "tokens_dropped")}
    assert fit["cut"] == len(LONG_CHATS) - 1 and fit["skipped"] == 1 and fit["tokens_dropped"] > 0, fit
    assert "cut to 2048 positions at a turn boundary" in proc.stdout
    assert shards["text/train"]["mean_tokens"] == 2048  # packed rows of the real length

    features = json.loads((repo / "metrics/features.json").read_text())
    assert features["enabled"] and features["patches"] == 729  # the encoder's tokens per image
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert set(metrics["tasks"]) == {"vqa", "pope_adversarial", "text_mc"}
    assert all(math.isfinite(metrics[k]) for k in ("vision_stable", "text_stable", "stable_mean"))
    assert "resumed" not in proc.stdout and not list((repo / "checkpoints").rglob("*.pt"))
