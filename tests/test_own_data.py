"""Bring your own data, end to end: `dvc repro` of a tiny params file on files in the user's formats.

Each run is the whole DAG (about a minute on 2 CPU cores). The first uses every format `prepare`
reads; the second only a folder of images with a captions JSONL, LLaVA JSON and VQAv2 files (so no
text task), tracked with `dvc add`, and then checks what replacing one input re-runs.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml
from dvcrepo import STAGES, make_repo, ran, run, set_params
from userdata import jsonl, write_every_format, write_folder_only

pytestmark = pytest.mark.slow


def test_every_format_through_dvc_repro(small_world, tmp_path):
    repo = make_repo(tmp_path / "repo")
    files = write_every_format(small_world, repo / "inputs/data", base="inputs/data")
    set_params(repo, **{"prepare.source": "files", "prepare.files": files})
    proc = run(repo, "dvc", "repro")
    assert ran(proc) == STAGES
    prepared = json.loads((repo / "metrics/prepare.json").read_text())
    assert prepared["source"] == "files"
    assert prepared["sources"]["prepare.files.captions[3]"] == {"kept": 10, "skipped": 0}
    assert sum(s["kept"] for k, s in prepared["sources"].items() if ".text[" in k) == len(
        jsonl(small_world / "text.jsonl"))
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert set(metrics["tasks"]) == {"vqa", "pope_random", "text_mc"}
    assert all(math.isfinite(metrics[k]) for k in ("vision_stable", "text_stable", "stable_mean"))
    assert "missing_groups" not in metrics
    deps = {d["path"]: d for d in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["prepare"]["deps"]}
    assert deps["inputs/data"]["nfiles"] > 100  # the user's files are hashed into the lock


def test_a_folder_of_images_without_a_text_task_and_what_a_replaced_input_reruns(small_world, tmp_path):
    repo = make_repo(tmp_path / "repo")
    files = write_folder_only(small_world, repo / "inputs/data", base="inputs/data")
    run(repo, "dvc", "add", "inputs/data/images")  # tracked by DVC, as the README shows
    # 40 captions are the whole text corpus here: hold out a fifth so the val split has a sequence
    set_params(repo, **{"prepare.source": "files", "prepare.files": files, "shard.val_fraction": 0.2})
    proc = run(repo, "dvc", "repro")
    assert ran(proc) == STAGES
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert set(metrics["tasks"]) == {"vqa"}
    assert math.isfinite(metrics["vision_stable"]) and metrics["stable_mean"] == metrics["vision_stable"]
    assert "text_stable" not in metrics and metrics["missing_groups"] == "text"
    assert "no text task" in proc.stdout

    assert ran(run(repo, "dvc", "repro")) == []  # nothing changed: nothing runs

    llava = json.loads((repo / "inputs/data/llava.json").read_text())
    llava[0]["conversations"][1]["value"] = "a different answer"
    (repo / "inputs/data/llava.json").write_text(json.dumps(llava))
    assert ran(run(repo, "dvc", "repro")) == STAGES  # the instructions feed everything after prepare
    assert ran(run(repo, "dvc", "repro")) == []
