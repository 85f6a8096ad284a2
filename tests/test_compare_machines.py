"""`python -m pipeline.compare_machines`: one machine's lock kept per CPU and compared with the others'."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import yaml
from dvcrepo import run

from pipeline.compare_machines import compare, cpu_slug, scores


def test_a_cpu_description_becomes_a_file_name():
    assert cpu_slug("Intel(R) Xeon(R) Processor, family 6 model 167, AVX-512") == \
        "intel-xeon-processor-family-6-model-167-avx-512"
    assert cpu_slug("AMD EPYC 7B13 64-Core Processor, family 25 model 1, AVX2") == \
        "amd-epyc-7b13-64-core-processor-family-25-model-1-avx2"


def test_scores_name_each_summary_with_its_standard_error():
    metrics = {"vision_stable": 0.47581, "vision_stable_se": 0.01134, "text_stable": 0.876, "text_stable_se": 0.0122,
               "stable_mean": 0.6759, "stable_mean_se": 0.00835, "tasks": {}}
    assert scores(metrics) == "vision_stable 0.476 ± 0.011, text_stable 0.876 ± 0.012, stable_mean 0.676 ± 0.008"


LOCK = {"schema": "2.0", "stages": {
    "prepare": {"cmd": "python -m pipeline prepare", "deps": [{"path": "vlm/data", "md5": "a.dir"}],
                "params": {"params.yaml": {"seed": 0}}, "outs": [{"path": "data/raw", "md5": "w.dir"}]},
    "text-pretrain": {"cmd": "python -m pipeline text-pretrain",
                      "deps": [{"path": "data/raw", "md5": "w.dir"}, {"path": "vlm/model", "md5": "m.dir"}],
                      "params": {"params.yaml": {"cpu": {"kernels": "compatible"}}},
                      "outs": [{"path": "data/pretrain", "md5": "p.dir"}]}}}


def test_locks_that_differ_only_in_code_hashes_give_the_same_results_and_a_weight_does_not():
    other_code = copy.deepcopy(LOCK)
    other_code["stages"]["text-pretrain"]["deps"][1]["md5"] = "changed-code.dir"
    other_weights = copy.deepcopy(LOCK)
    other_weights["stages"]["text-pretrain"]["outs"][0]["md5"] = "other-rounding.dir"
    lines = compare(LOCK, {"a": other_code, "b": other_weights})
    assert lines == ["  a: the same results, every stage",
                     "  b: differs in 1 place: stage text-pretrain: its outs differ"]


@pytest.mark.slow
def test_the_run_keeps_this_cpus_lock_and_compares_it_with_the_committed_one_and_another_cpus(tiny):
    run(tiny, "git", "add", "dvc.lock")
    run(tiny, "git", "commit", "-qm", "lock")
    committed = yaml.safe_load((tiny / "dvc.lock").read_text())
    other = copy.deepcopy(committed)
    (encoder,) = [o for o in other["stages"]["train-encoder"]["outs"] if o["path"] == "data/encoder"]
    encoder["md5"] = "0" * 32 + ".dir"  # another CPU's rounding
    shutil.rmtree(tiny / "reports/machines")  # the project's own machines, copied with the sources
    folder = tiny / "reports/machines/avx2"
    folder.mkdir(parents=True)
    (folder / "another-cpu.lock").write_text(yaml.safe_dump(other))

    out = run(tiny, "python", "-m", "pipeline.compare_machines").stdout
    (mine,) = [p for p in folder.glob("*.lock") if p.name != "another-cpu.lock"]
    assert yaml.safe_load(mine.read_text())["stages"] == committed["stages"]  # this machine reproduced it
    scored = scores(json.loads((tiny / "metrics/eval.json").read_text()))  # so its scores are the workspace's
    assert f"\n# scores: {scored}\n" in mine.read_text() and f"this machine's scores: {scored}" in out
    assert "dvc.lock (committed): the same results, every stage" in out
    assert "another-cpu.lock: differs in 1 place: stage train-encoder: its outs differ" in out
    assert run(tiny, "git", "status", "--porcelain", "--", "dvc.lock", "params.yaml").stdout == ""
    assert "compare-machines" not in run(tiny, "dvc", "exp", "list").stdout  # the experiment is gone
