"""Named studies (pipeline/study.py): checked before anything is queued, run as DVC experiments,
reported from `dvc exp show --json`; and run elsewhere, pushed, pulled back and reported."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dvcrepo import BIN, ROOT, make_repo, run, set_params

from pipeline import findings
from pipeline import study as S

TINY_STUDY = {"tiny-ratio": {"title": "two image ratios", "param": "cooldown.image_ratio", "values": [0.1, 0.3],
                             "findings": [{"claim": "10% beats 30%", "metric": "vision_stable",
                                           "better": 0.1, "worse": 0.3}]}}


def check_fails(tmp_path, monkeypatch, studies_text: str, name: str) -> None:
    """Run the command on a studies file in a folder that is no DVC repository: anything it tried to
    queue would fail differently; it must stop at the check."""
    monkeypatch.chdir(tmp_path)
    shutil.copy2(ROOT / "params.yaml", "params.yaml")
    Path("studies.yaml").write_text(studies_text)
    with pytest.raises(SystemExit) as code:
        raise SystemExit(S.main([name]))
    assert code.value.code == 1
    assert not Path(".dvc").exists()


@pytest.mark.parametrize(("studies", "name", "message"), [
    (yaml.safe_dump(TINY_STUDY), "nope", "studies.yaml: no study `nope`; studies: tiny-ratio"),
    (yaml.safe_dump({"s": {"param": "cooldown.image_ration", "values": [0.1]}}), "s",
     "study `s`: `cooldown.image_ration` is not a params key"),
    (yaml.safe_dump({"s": {"param": "cooldown.image_ratio", "values": [0.1, 1.5]}}), "s",
     "study `s`, cooldown.image_ratio=1.5: `cooldown.image_ratio` must be <= 1.0, got 1.5"),
    (yaml.safe_dump({"s": {"param": "branch.fraction", "values": [0.3]}}), "s",
     "`branch.fraction` 0.3 is not a saved branch point"),
    ("s:\n  param: [unclosed\n", "s", "studies.yaml: not valid YAML at line"),
    (yaml.safe_dump({"s": {"param": "finetune.epochs"}}), "s", "study `s`: needs `param`"),
])
def test_bad_studies_fail_before_anything_is_queued(tmp_path, monkeypatch, capsys, studies, name, message):
    check_fails(tmp_path, monkeypatch, studies, name)
    assert message in capsys.readouterr().err


def test_the_committed_studies_are_valid():
    studies = S.load_studies(ROOT / "studies.yaml")
    assert {"branch", "ratio", "scratch-ratio", "instruct", "ft-epochs", "freeze", "control"} <= set(studies)
    for study in studies.values():
        runs = S.runs_of(study, ROOT / "params.yaml")
        assert len(runs) == len(study.values) * 3 and len({r.name for r in runs}) == len(runs)


def rows_of(values: dict, metric: str = "vision_stable") -> list[dict]:
    """collect()'s rows: {variant value: [score per study seed]}, all in chain 0."""
    return [{"value": v, "seed": s, "chain": 0, "key": f"c0-s{s}", "lr_mode": "continue", metric: x}
            for v, xs in values.items() for s, x in enumerate(xs)]


def test_findings_are_judged_by_a_stated_test_on_every_runs_value():
    """Means 0.04 apart with sd 0.02, three seeds a side: more than two standard errors (the old rule
    said reproduced), but the paired t-test on the seeds' differences (0.06, 0.02, 0.04) gives
    p = 1 - sqrt(12 / 14) = 0.074 on 2 degrees of freedom: not distinguishable at 0.05."""
    study = S.Study("s", "s", "cooldown.image_ratio", [1, 2], findings=[S.Finding("1 beats 2", "vision_stable", 1, 2)])
    summary = S.summarise(study, rows_of({1: [0.72, 0.70, 0.74], 2: [0.66, 0.68, 0.70]}))
    assert summary["1"]["vision_stable"]["runs"] == {"c0-s0": 0.72, "c0-s1": 0.70, "c0-s2": 0.74}
    assert summary["1"]["vision_stable"]["sd"] == pytest.approx(0.02) and summary["1"]["vision_stable"]["n"] == 3
    judged = S.judge(study.findings[0], summary)
    assert judged["test"] == "paired t" and judged["diff"] == pytest.approx(0.04)
    assert judged["p"] == pytest.approx(1 - math.sqrt(12 / 14))  # t^2 = 12 (mean 0.04 / (0.02 / sqrt 3))
    assert judged["verdict"] == "not distinguishable" and judged["alpha"] == 0.05
    assert judged["ours"] == "0.720 ± 0.020 vs 0.680 ± 0.020 (n = 3, 3)"
    row = S.finding_rows([judged])[2]
    assert row.startswith("| 1 beats 2 | vision_stable | 0.720 ± 0.020 vs 0.680 ± 0.020 (n = 3, 3) | +0.040 [")
    assert "| paired t, p = 0.074 |" in row and row.endswith("| not distinguishable (α = 0.05) |")
    assert S.judge(study.findings[0], summary, alpha=0.1)["verdict"] == "reproduced"
    one = S.summarise(study, rows_of({1: [0.9], 2: [0.5]}))
    assert S.judge(study.findings[0], one)["verdict"] == "not distinguishable (one seed: no noise estimate)"
    assert S.judge(study.findings[0], {"1": one["1"]})["verdict"] == "not run"


def test_findings_are_tested_again_over_whole_chains_where_both_variants_ran_several():
    """Two chains, differences 0.1, 0.1 in chain 0 and 0.3, 0.3 in chain 1: the report adds the
    chain-level test (chain means 0.1, 0.3: t = 2 on 1 df, a Cauchy: p = 1 - 2 atan(2) / pi = 0.295)
    beside the run-level one."""
    study = S.Study("s", "s", "cooldown.image_ratio", [1, 2], findings=[S.Finding("1 beats 2", "vision_stable", 1, 2)])
    rows = [{"value": v, "seed": s, "chain": c, "key": f"c{c}-s{s}", "lr_mode": "continue",
             "vision_stable": 0.5 + (d if v == 1 else 0.0) + 0.01 * s}
            for v in (1, 2) for c, d in ((0, 0.1), (1, 0.3)) for s in (0, 1)]
    judged = S.judge(study.findings[0], S.summarise(study, rows))
    assert judged["test"] == "paired t" and judged["n"] == (4, 4)
    chains = judged["by_chain"]
    assert chains["n"] == (2, 2) and chains["p"] == pytest.approx(1 - 2 * math.atan(2) / math.pi)
    assert S.chain_lines([judged])[-1] == ("- 1 beats 2 (vision_stable): +0.200 [-1.071, +1.471] (95% CI) over 2 "
                                           "chains, paired t, p = 0.295: not distinguishable (α = 0.05)")
    one = S.judge(study.findings[0], S.summarise(study, rows_of({1: [0.7, 0.8], 2: [0.5, 0.6]})))
    assert "by_chain" not in one and S.chain_lines([one]) == []


def test_the_report_splits_the_spread_into_study_seeds_and_chain_seeds():
    """Per variant: chain 0 scores 0.1, 0.3 and chain 1 0.5, 0.7 (verdicts.spread: within sd sqrt 0.02,
    chains sqrt 0.07); the table averages the variances over the variants."""
    study = S.Study("s", "s", "cooldown.image_ratio", [1, 2])
    rows = [{"value": v, "seed": s, "chain": c, "key": f"c{c}-s{s}", "lr_mode": "continue",
             **{m: base + x for m in S.SCORES}}
            for v, base in ((1, 0.0), (2, 0.1)) for c, xs in ((0, (0.1, 0.3)), (1, (0.5, 0.7)))
            for s, x in enumerate(xs)]
    summary = S.summarise(study, rows)
    assert summary["2"]["text_stable"]["runs"]["c1-s0"] == pytest.approx(0.6)
    assert summary["1"]["text_stable"]["spread"]["chain_sd"] == pytest.approx(math.sqrt(0.07))
    table = S.spread_lines(summary)
    assert "| text_stable | 0.141 | 0.265 |" in table
    assert S.spread_lines(S.summarise(study, rows_of({1: [0.1, 0.2], 2: [0.3, 0.4]}))) == []  # one chain


def test_chain_seeds_repeat_whole_chains_beside_the_study_seeds(tmp_path):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["study"].update(repeats=2, chain_seeds=3)
    base["seed"] = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base))
    runs = S.runs_of(S.Study("r", "r", "cooldown.image_ratio", [0.1]), tmp_path / "params.yaml")
    assert [r.name for r in runs] == ["r-0.1-s0", "r-0.1-s1", "r-0.1-c1-s0", "r-0.1-c1-s1",
                                      "r-0.1-c2-s0", "r-0.1-c2-s1"]
    assert [r.sets.get("seed") for r in runs] == [None, None, 6, 6, 7, 7]  # chain 0 is the committed chain
    assert [r.key for r in runs][2:4] == ["c1-s0", "c1-s1"] and {r.sets["study.seed"] for r in runs} == {0, 1}
    with pytest.raises(S.StudyError, match="`seed` is set by the runner"):
        S.runs_of(S.Study("r", "r", "seed", [1, 2]), tmp_path / "params.yaml")
    # sized down: two more chains for the variants the findings compare only (`--chain-seeds 3 --values`)
    study = S.Study("r", "r", "cooldown.image_ratio", [0.1, 0.2, 0.5])
    extra = S.runs_of(study, tmp_path / "params.yaml", chain_seeds=2, values=[0.5, 0.1])
    assert [r.name for r in extra] == ["r-0.1-s0", "r-0.1-s1", "r-0.1-c1-s0", "r-0.1-c1-s1",
                                       "r-0.5-s0", "r-0.5-s1", "r-0.5-c1-s0", "r-0.5-c1-s1"]
    mixed = S.runs_of(study, tmp_path / "params.yaml", chain_seeds=1) + [r for r in extra if r.chain]
    assert S._seeds(mixed) == ("2 study seeds in each of 2 chains (whole text runs) for 0.1, 0.5, "
                               "in one chain for the others")
    with pytest.raises(S.StudyError, match=r"0.3 not among its values \(0.1, 0.2, 0.5\)"):
        S.runs_of(study, tmp_path / "params.yaml", values=[0.3])


def test_a_workspace_that_differs_from_the_commit_is_refused_naming_the_keys_and_files(tmp_path):
    """A leftover `dvc exp run -S vision.blank_images=true` in params.yaml would make every queued run
    the blind control; a changed stage dependency would train other code. The study names each and
    queues nothing (no DVC process starts: the repository has no .dvc/tmp afterwards)."""
    repo = make_repo(tmp_path / "repo")
    set_params(repo, **{"vision.blank_images": True, "cooldown.steps": 7})
    with (repo / "vlm/io.py").open("a") as f:
        f.write("# an uncommitted edit\n")
    (repo / "dvc.yaml").write_text((repo / "dvc.yaml").read_text() + "\n# an uncommitted edit\n")
    proc = run(repo, str(BIN / "python"), "-m", "pipeline.study", "ratio", check=False)
    assert proc.returncode == 1
    assert "params.yaml: `vision.blank_images` is true, committed false" in proc.stderr
    assert "params.yaml: `cooldown.steps` is 7, committed 6" in proc.stderr
    assert "vlm/io.py: changed since the last commit" in proc.stderr
    assert "dvc.yaml: changed since the last commit" in proc.stderr
    assert "`dvc exp run --queue -S ...` or `--temp`" in proc.stderr
    assert not (repo / ".dvc/tmp/exps").exists()

    subprocess.run(["git", "checkout", "--", "."], cwd=repo, check=True)
    assert run(repo, "git", "status", "--porcelain").stdout == ""
    proc = run(repo, str(BIN / "python"), "-c", "from pipeline.study import changed_inputs; print(changed_inputs())")
    assert proc.stdout.strip() == "[]"


def committed_baseline(tmp_path, monkeypatch) -> list[str]:
    """A git repository in tmp_path (the working directory now) whose one commit holds this project's
    params.yaml and dvc.yaml and a stub dvc.lock; returns the git command to commit with."""
    monkeypatch.chdir(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], check=True)
    Path("dvc.lock").write_text("schema: '2.0'\n")
    shutil.copy2(ROOT / "params.yaml", "params.yaml")
    shutil.copy2(ROOT / "dvc.yaml", "dvc.yaml")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "baseline"], check=True)
    return git


def test_a_study_resumes_from_the_runs_its_committed_report_records(tmp_path, monkeypatch):
    """DVC's experiments live in one clone; the report's metrics.json records each finished run with
    its params under the pipeline it ran (dvc.lock's git hash). A clone at a commit with the same
    dvc.lock takes those runs as done; another dvc.lock, or other params for a run's name, does not."""
    git = committed_baseline(tmp_path, monkeypatch)
    study = S.Study("s", "s", "cooldown.image_ratio", [0.1, 0.3])
    runs = [S.Run(f"s-{v}-s0", v, 0, {"cooldown.image_ratio": v, "study.seed": 0}) for v in (0.1, 0.3)]
    rows = [{"run": r.name, "value": r.value, "seed": 0, "chain": 0, "key": "c0-s0", "sets": r.sets,
             "lr_mode": "continue", "text_pretrain": False, "minutes": 9.5, "vision_stable": 0.4} for r in runs]
    Path("reports/s").mkdir(parents=True)
    kept = {"baseline": {"commit": "x", "dvc.lock": S.pipeline_id()}, "runs": rows[:1]}
    Path("reports/s/metrics.json").write_text(json.dumps(kept))
    assert S.recorded(study, runs) == {"s-0.1-s0": rows[0]}
    Path("README.md").write_text("a fix that leaves the pipeline alone\n")  # committed mid-study
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "docs"], check=True)
    assert len(S.same_pipeline_commits()) == 2 and S.recorded(study, runs) == {"s-0.1-s0": rows[0]}
    other = [S.Run("s-0.1-s0", 0.1, 0, {"cooldown.image_ratio": 0.1, "study.seed": 0, "branch.fraction": 0.6})]
    assert S.recorded(study, other) == {}  # the same name with other params: another run
    old_lock = S.pipeline_id()
    Path("dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # the pipeline changed: nothing carries over
    subprocess.run([*git, "commit", "-qam", "pipeline"], check=True)
    assert len(S.same_pipeline_commits()) == 1 and S.recorded(study, runs) == {}
    # unless the earlier lock is declared to give the same results (a code change that cannot change one),
    # and is in this repository's history with the same stages' commands, params and outputs
    not_here = "0" * 40
    S.SAME_RESULTS_FILE.write_text(yaml.safe_dump([{"lock": old_lock, "why": "a retry"}, {"lock": not_here}]))
    assert S.pipeline_ids() == {S.pipeline_id(), old_lock}
    assert S.recorded(study, runs) == {"s-0.1-s0": rows[0]}
    Path("dvc.lock").write_text("schema: '2.0'\nstages:\n  a:\n    cmd: python -m pipeline a\n")  # results changed
    subprocess.run([*git, "commit", "-qam", "a stage more"], check=True)
    assert S.recorded(study, runs) == {}


def _lock(code_md5: str, out_md5: str = "o1", cmd: str = "python -m pipeline b") -> dict:
    """A parsed dvc.lock of two stages: `a` writes data/a, `b` reads it with code b.py."""
    return {"stages": {
        "a": {"cmd": "python -m pipeline a", "deps": [{"path": "a.py", "md5": "x"}],
              "outs": [{"path": "data/a", "md5": out_md5}]},
        "b": {"cmd": cmd, "deps": [{"path": "data/a", "md5": out_md5}, {"path": "b.py", "md5": code_md5}],
              "params": {"params.yaml": {"b.steps": 3}}, "outs": [{"path": "data/b", "md5": "o2"}]}}}


def test_locks_give_the_same_results_when_only_code_hashes_differ():
    assert S.same_results(_lock("c1"), _lock("c2")) == []
    assert S.same_results(_lock("c1"), _lock("c1", out_md5="o9")) == [
        "stage a: its outs differ", "stage b: its deps differ beyond code"]
    assert S.same_results(_lock("c1"), _lock("c1", cmd="python -m pipeline c")) == ["stage b: its cmd differ"]


def test_every_lock_declared_to_give_the_same_results_does(monkeypatch):
    """reports/same_results.yaml carries committed runs over a change of dvc.lock: each lock it names
    must say why, and count (`pipeline_ids`: in this repository's history, and differing from HEAD's
    lock only in code hashes)."""
    monkeypatch.chdir(ROOT)
    declared = yaml.safe_load(S.SAME_RESULTS_FILE.read_text()) if S.SAME_RESULTS_FILE.exists() else []
    assert all(entry.get("why") for entry in declared), declared
    not_counted = {entry["lock"] for entry in declared} - S.pipeline_ids()
    assert not not_counted, f"{S.SAME_RESULTS_FILE}: not in the history, or other results than dvc.lock: {not_counted}"


def test_a_run_keeps_the_cpu_it_was_first_recorded_on(monkeypatch):
    """A workspace, its experiments included, can outlive the machine it ran on: a run the report
    already records keeps that record's CPU when the report is written again on another machine."""
    study = S.Study("s", "s", "cooldown.image_ratio", [0.1, 0.3])
    runs = [S.Run(f"s-{v}-s0", v, 0, {"cooldown.image_ratio": v, "study.seed": 0}) for v in (0.1, 0.3)]
    data = {"data": {"metrics": {"metrics/eval.json": {"data": {"vision_stable": 0.4}}}}}
    monkeypatch.setattr(S, "experiments", lambda finished=True: {r.name: data for r in runs})
    monkeypatch.setattr(S, "recorded", lambda study, runs: {runs[0].name: {"cpu": "the machine it ran on"}})
    monkeypatch.setattr(S, "dvc", lambda *a, **k: subprocess.CompletedProcess(a, 0, "", ""))
    monkeypatch.setattr(S, "this_cpu", lambda: "this machine")
    rows = S.collect(study, runs)
    assert [row["cpu"] for row in rows] == ["the machine it ran on", "this machine"]
    assert [row["vision_stable"] for row in rows] == [0.4, 0.4]


def test_a_run_another_study_recorded_with_the_same_params_is_taken_not_run_again(tmp_path, monkeypatch):
    """`freeze` at its default (true) is `branch` at its default (0.8): the same params, so the same
    experiment. The runner takes it from the branch report, named as freeze's run, with `from`
    saying where it ran; a run that differs in any param (another seed, or vision.freeze) is not."""
    monkeypatch.chdir(tmp_path)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["branch"]["fraction"], base["vision"]["freeze"] = 0.8, True
    Path("params.yaml").write_text(yaml.safe_dump(base))
    shutil.copy2(ROOT / "dvc.yaml", "dvc.yaml")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], check=True)
    Path("dvc.lock").write_text("schema: '2.0'\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "baseline"], check=True)
    branch_rows = [{"run": f"branch-{v}-s{seed}", "value": v, "seed": seed, "chain": 0, "key": f"c0-s{seed}",
                    "sets": {"branch.fraction": v, "study.seed": seed}, "minutes": 6.0, "lr_mode": "continue",
                    "vision_stable": 0.4 + seed}
                   for v in (0.6, 0.8) for seed in (0, 1)]
    Path("reports/branch").mkdir(parents=True)
    Path("reports/branch/metrics.json").write_text(json.dumps(
        {"baseline": {"commit": "x", "dvc.lock": S.pipeline_id()}, "runs": branch_rows}))
    study = S.Study("freeze", "freeze", "vision.freeze", [True, False])
    runs = [S.Run(f"freeze-{json.dumps(v)}-s{seed}", v, seed, {"vision.freeze": v, "study.seed": seed})
            for v in (True, False) for seed in (0, 1, 2)]
    taken = S.recorded(study, runs)
    assert sorted(taken) == ["freeze-true-s0", "freeze-true-s1"]  # no branch run has seed 2 or freeze false
    assert taken["freeze-true-s1"] == {**branch_rows[3], "run": "freeze-true-s1", "value": True,
                                       "sets": {"vision.freeze": True, "study.seed": 1},
                                       "from": "branch/branch-0.8-s1"}
    base["study"].update(repeats=5, chain_seeds=2, alpha=0.01)  # the runner's own keys: the same experiments
    Path("params.yaml").write_text(yaml.safe_dump(base))
    assert S.recorded(study, runs) == taken
    assert [r.name for r in S.to_run(study, runs, set(taken))] == [
        "freeze-true-s2", "freeze-false-s0", "freeze-false-s1", "freeze-false-s2"]
    # once freeze's own report records them, its record is the one taken (it keeps `from`)
    Path("reports/freeze").mkdir()
    own = {**taken["freeze-true-s0"], "vision_stable": 0.9}
    Path("reports/freeze/metrics.json").write_text(json.dumps(
        {"baseline": {"commit": "y", "dvc.lock": S.pipeline_id()}, "runs": [own]}))
    assert S.recorded(study, runs)["freeze-true-s0"] == own
    summary = S.summarise(study, list(S.recorded(study, runs).values()))
    assert summary["true"]["vision_stable"]["runs"] == {"c0-s0": 0.9, "c0-s1": 1.4}


def test_only_finished_experiments_are_reported(monkeypatch):
    """`dvc exp show --json` (DVC 3) lists queued and running experiments beside finished ones, a running
    one with the workspace's metrics: the report, re-written while the queue runs, must take neither."""
    def exp(name, state):
        executor = None if state is None else {"state": state, "name": "dvc-task"}
        return {"name": name, "executor": executor,
                "revs": [{"rev": name, "name": name, "data": {"metrics": {}, "params": {}}}]}
    shown = [{"rev": "workspace", "experiments": None},
             {"rev": "abc", "experiments": [exp("a", "success"), exp("b", None), exp("c", "running"),
                                            exp("d", "queued"), exp("e", "failed")]},
             {"rev": "old", "experiments": [exp("f", "success")]}]  # a baseline with another dvc.lock
    monkeypatch.setattr(S, "same_pipeline_commits", lambda: ["abc"])
    monkeypatch.setattr(S, "dvc", lambda *a, **k: subprocess.CompletedProcess(a, 0, json.dumps(shown), ""))
    assert sorted(S.experiments()) == ["a", "b"]
    assert sorted(S.experiments(finished=False)) == ["a", "b", "c", "d", "e"]  # none of these is queued again


def _nothing_done_or_reported(monkeypatch) -> None:
    """For tests of the runner's wait on the queue: no run done before, no report written."""
    monkeypatch.setattr(S, "experiments", lambda finished=True: {})
    monkeypatch.setattr(S, "recorded", lambda study, runs: {})
    monkeypatch.setattr(S, "report", lambda *a, **k: None)
    monkeypatch.setattr(S, "_finished_at", lambda name, default: default)


def test_a_stopped_queue_ends_the_wait_and_names_the_runs_left(tmp_path, monkeypatch, capsys):
    """`dvc queue stop` lets the running experiment finish and leaves the rest queued with no worker:
    the runner says so and returns, where it used to wait on them forever."""
    (tmp_path / "studies.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    study = S.load_studies(tmp_path / "studies.yaml")["tiny-ratio"]
    runs = S.runs_of(study, ROOT / "params.yaml")[:2]
    calls = []

    def fake_dvc(*args, check=True):
        calls.append(args)
        out = ""
        if args[:2] == ("queue", "status"):
            workers = 1 if sum(c[:2] == ("queue", "status") for c in calls) == 1 else 0
            out = (f"Task     Name  Created    Status\n1234567  {runs[0].name}  09:51 AM   Success\n"
                   f"89abcde  {runs[1].name}  09:51 AM   Queued\n\nWorker status: {workers} active, 0 idle\n")
        return subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(S, "dvc", fake_dvc)
    _nothing_done_or_reported(monkeypatch)
    monkeypatch.setattr(S.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0))
    assert S.run_study(study, runs, poll=0) == []
    out = capsys.readouterr().out
    assert f"the queue was stopped (`dvc queue stop`) with 1 runs queued ({runs[1].name})" in out
    assert sum(c[:2] == ("queue", "status") for c in calls) == 3  # a worker seen, then none twice
    assert [c for c in calls if c[:2] == ("exp", "run")] == [("exp", "run", "--queue", "-n", r.name, *r.args())
                                                              for r in runs]


def test_a_worker_that_died_of_an_error_is_started_again(tmp_path, monkeypatch, capsys):
    """Celery's file broker can hand DVC's queue worker an empty message while `dvc queue status` asks
    it what it runs (treeverse/dvc-task#73): the worker logs "Unrecoverable error" and exits with runs
    still queued. Unlike `dvc queue stop`, that is no reason to end the study: the runner starts the
    worker again and waits for the rest."""
    (tmp_path / "studies.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    study = S.load_studies(tmp_path / "studies.yaml")["tiny-ratio"]
    runs = S.runs_of(study, ROOT / "params.yaml")[:2]
    log = tmp_path / "celery" / "dvc-exp-worker-1.out"
    log.parent.mkdir()
    log.write_text("[...] CRITICAL/MainProcess] Unrecoverable error: JSONDecodeError('an earlier worker')\n")
    starts, looks = [], []

    def fake_start(*args, **kwargs):
        starts.append(args)
        return subprocess.CompletedProcess(args, 0)

    def fake_dvc(*args, check=True):
        if args[:2] != ("queue", "status"):
            return subprocess.CompletedProcess(args, 0, "", "")
        looks.append(len(starts))
        if len(starts) == 1 and looks.count(1) == 1:  # the first worker dies after the first run
            with log.open("a") as f:
                f.write("[...] CRITICAL/MainProcess] Unrecoverable error: JSONDecodeError('Expecting value')\n")
        second = {1: "Queued", 2: "Running" if looks.count(2) == 1 else "Success"}[len(starts)]
        workers = int(looks.count(1) == 1 or second == "Running")
        out = (f"Task     Name  Created    Status\n1234567  {runs[0].name}  09:51 AM   Success\n"
               f"89abcde  {runs[1].name}  09:51 AM   {second}\n\nWorker status: {workers} active, 0 idle\n")
        return subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(S, "WORKER_LOGS", log.parent)
    monkeypatch.setattr(S, "dvc", fake_dvc)
    _nothing_done_or_reported(monkeypatch)
    monkeypatch.setattr(S.subprocess, "run", fake_start)
    assert S.run_study(study, runs, poll=0) == []
    out = capsys.readouterr().out
    assert len(starts) == 2  # the worker started once more, not for the earlier worker's error
    assert "the DVC queue worker died (JSONDecodeError('Expecting value')) with 1 runs queued" in out
    assert "the queue was stopped" not in out
    # a worker stopped as asked after an error is not started again
    log.write_text("Unrecoverable error: JSONDecodeError('x')\n[...] Got shutdown from remote\n")
    assert S.worker_crash({}) is None


def test_the_variants_the_findings_compare_are_queued_first(tmp_path):
    (tmp_path / "studies.yaml").write_text((ROOT / "studies.yaml").read_text())
    branch = S.load_studies(tmp_path / "studies.yaml")["branch"]
    runs = S.runs_of(branch, ROOT / "params.yaml")
    order = [r.name for r in S.to_run(branch, runs, {"branch-0.8-s0"})]
    assert order[:8] == ["branch-0.0-s0", "branch-0.0-s1", "branch-0.0-s2", "branch-0.8-s1", "branch-0.8-s2",
                         "branch-1.0-s0", "branch-1.0-s1", "branch-1.0-s2"]
    assert sorted(order[8:]) == sorted(r.name for r in runs if r.value in (0.2, 0.4, 0.6))


def exps_far(repo: Path) -> dict[str, float]:
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    return {e["name"]: e["revs"][0]["data"]["metrics"]["metrics/eval.json"]["data"]["vision_stable"]
            for rev in shown for e in rev.get("experiments") or [] if e["name"].startswith("far-")}


def table(report: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in report.splitlines() if re.match(r"\| \d", line)]
    return {cells[0].strip().split(" ")[0]: [c.strip() for c in cells[1:]] for cells in rows}


@pytest.mark.slow
def test_a_two_variant_two_seed_study_end_to_end(tmp_path, tiny):
    repo = tiny  # reproduced; study.repeats is read by the study runner alone
    set_params(repo, **{"study.repeats": 2})
    (repo / "studies.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    assert "up to date" in run(repo, "dvc", "status").stdout
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")

    proc = run(repo, "python", "-m", "pipeline.study", "tiny-ratio", "--poll", "5")
    assert "[4/4]" in proc.stdout  # progress: done/total, and the running experiment with its stage
    assert re.search(r"\[[0-3]/4\] tiny-ratio-0\.[13]-s[01]: [a-z-]+ \(\d+\.\d min\)", proc.stdout), proc.stdout
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    exps = {e["name"]: e["revs"][0]["data"] for rev in shown for e in rev.get("experiments") or []}
    names = {f"tiny-ratio-{v}-s{s}" for v in ("0.1", "0.3") for s in (0, 1)}
    assert set(exps) == names
    report = (repo / "reports/tiny-ratio/report.md").read_text()
    assert "text-pretrain ran in 0 of the 4 runs with a DVC log." in report  # the baseline's text run is reused
    rows = table(report)
    for value in ("0.1", "0.3"):
        scores = [exps[f"tiny-ratio-{value}-s{s}"]["metrics"]["metrics/eval.json"]["data"]["vision_stable"]
                  for s in (0, 1)]
        mean, sd, n = S.mean_sd(scores)
        assert rows[value][0] == "2" and rows[value][1] == f"{mean:.3f} ± {sd:.3f}"
        seeds = {exps[f"tiny-ratio-{value}-s{s}"]["params"]["params.yaml"]["data"]["study"]["seed"] for s in (0, 1)}
        assert seeds == {0, 1}
    assert "10% beats 30%" in report and (repo / "reports/tiny-ratio/tiny-ratio.png").stat().st_size > 1000
    # every run's value is kept, and the finding is tested on them (paired: both variants ran seeds 0, 1)
    kept = json.loads((repo / "reports/tiny-ratio/metrics.json").read_text())
    for value in ("0.1", "0.3"):
        assert kept["variants"][value]["vision_stable"]["runs"] == {
            f"c0-s{s}": exps[f"tiny-ratio-{value}-s{s}"]["metrics"]["metrics/eval.json"]["data"]["vision_stable"]
            for s in (0, 1)}
    (finding,) = kept["findings"]
    assert finding["test"] == "paired t" and finding["alpha"] == 0.05 and finding["n"] == [2, 2]
    assert f"paired t, {S._p(finding['p'])}" in report
    assert re.search(r"The 4 runs took \d+\.\d min here, \d+\.\d min per run\.", report), report
    # each run's scores are a DVC plot: `dvc plots diff` sets two experiments' bars side by side
    pair = ["tiny-ratio-0.1-s0", "tiny-ratio-0.3-s1"]
    plots = json.loads(run(repo, "dvc", "plots", "diff", *pair, "--json").stdout)["data"]["logs/scores.json"]
    assert set(plots[0]["revisions"]) == set(pair)
    bars = {(v["rev"], v["score"]): v["stable"] for v in plots[0]["content"]["data"]["values"]}
    for name in pair:
        scores = exps[name]["metrics"]["metrics/eval.json"]["data"]
        assert bars[(name, "finetune/vision_stable")] == scores["vision_stable"]
        assert (name, "text_pretrain/text_mc") in bars and (name, "cooldown/vqa") in bars
    # the two study seeds are different runs of the same variant, from the same text run
    s0, s1 = (exps[f"tiny-ratio-0.1-s{s}"]["metrics"]["metrics/cooldown.json"]["data"] for s in (0, 1))
    assert s0["branch_lr"] == s1["branch_lr"] and s0["realised_token_share"] != s1["realised_token_share"]

    again = run(repo, "python", "-m", "pipeline.study", "tiny-ratio")  # nothing left to run
    assert "4 runs (4 already done)" in again.stdout
    # a killed workspace `dvc exp run` leaves EXEC_BASELINE at its commit: DVC then reads `HEAD` as
    # that commit; the runner names the baseline by its hash and still finds the study's runs
    first = run(repo, "git", "rev-list", "--max-parents=0", "HEAD").stdout.strip()
    run(repo, "git", "update-ref", "refs/exps/exec/EXEC_BASELINE", first)
    assert "4 runs (4 already done)" in run(repo, "python", "-m", "pipeline.study", "tiny-ratio").stdout
    run(repo, "git", "update-ref", "-d", "refs/exps/exec/EXEC_BASELINE")
    # the report records every run (params, scores, wall minutes) under the pipeline it ran: a commit
    # that leaves dvc.lock alone keeps the runs, and a clone without the experiments reports them
    timed = [r["minutes"] for r in kept["runs"]]
    assert None not in timed and min(timed) >= 0 and sum(timed) > 0 and kept["baseline"]["dvc.lock"]
    run(repo, "git", "add", "reports")
    run(repo, "git", "commit", "-qm", "the report")
    assert "4 runs (4 already done)" in run(repo, "python", "-m", "pipeline.study", "tiny-ratio").stdout
    subprocess.run(["git", "clone", "-q", str(repo), str(tmp_path / "clone")], check=True)
    run(tmp_path / "clone", "python", "-m", "pipeline.study", "tiny-ratio", "--report")
    assert table((tmp_path / "clone/reports/tiny-ratio/report.md").read_text()) == rows

    # elsewhere: a bare git remote and a DVC remote stand in for the cluster's
    remote, store = tmp_path / "origin.git", tmp_path / "dvc-store"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    run(repo, "git", "remote", "add", "origin", str(remote))
    run(repo, "git", "push", "-q", "origin", "HEAD:main")
    run(repo, "dvc", "remote", "add", "-d", "store", str(store))
    run(repo, "git", "commit", "-qam", "remote")
    run(repo, "git", "push", "-q", "origin", "HEAD:main")
    run(repo, "dvc", "push", "-q")
    with open(repo / "studies.yaml", "a") as f:
        f.write(yaml.safe_dump({"far": {"param": "cooldown.image_ratio", "values": [0.2]}}))
    commands = run(repo, "python", "-m", "pipeline.study", "far", "--plan").stdout.splitlines()
    assert len(commands) == 2 and commands[0].startswith("dvc pull -q && dvc exp run --temp -n far-0.2-s0")
    node = tmp_path / "node"
    subprocess.run(["git", "clone", "-q", "-b", "main", str(remote), str(node)], check=True)
    shutil.copy2(repo / "studies.yaml", node / "studies.yaml")
    run(node, "bash", "-c", commands[0])  # the cluster's job 0
    proc = run(repo, "python", "-m", "pipeline.study", "far", "--pull", "origin")
    far = (repo / "reports/far/report.md").read_text()
    assert "1 of 2 runs finished" in far and "(1 ran elsewhere)" in far
    assert table(far)["0.2"][:2] == ["1", f"{exps_far(repo)['far-0.2-s0']:.3f}"]


def test_readme_results_are_the_committed_reports():
    """README's study tables are those of the committed reports (reports/<study>/report.md), verbatim:
    each table whole: its header, separator and rows in one block, as in the report."""
    readme = "\n" + (ROOT / "README.md").read_text() + "\n"
    reports = sorted((ROOT / "reports").glob("*/report.md"))
    assert reports, "no committed study report"
    for report in reports:
        tables = re.findall(r"(?:^\|.*\n?)+", report.read_text(), flags=re.M)
        assert tables, report
        for block in tables:
            assert "\n" + block.rstrip("\n") + "\n" in readme, f"{report}: table not whole in README.md:\n{block}"
        assert f"reports/{report.parent.name}/{report.parent.name}.png" in readme


def test_the_findings_page_is_the_committed_reports():
    """reports/README.md lists every committed study, and every finding they test with its verdict."""
    page = (ROOT / "reports/README.md").read_text()
    assert page == findings.page(ROOT / "reports", ROOT / "studies.yaml")
    for path in (ROOT / "reports").glob("*/metrics.json"):  # every study, with or without findings
        assert f"\n- [{path.parent.name}]({path.parent.name}/report.md): " in page, path
        for j in json.loads(path.read_text())["findings"]:  # a study part-way: its untested claims "not run"
            end = "| not run |" if j["verdict"] == "not run" else f"| {j['verdict']} (α = {j['alpha']:g}) |"
            assert any(line.startswith(f"| [{path.parent.name}](") and f"| {j['claim']} |" in line
                       and line.endswith(end) for line in page.splitlines())


def test_a_dvc_lock_that_differs_from_the_commit_is_refused(tmp_path, monkeypatch):
    """`dvc repro` on a CPU of another vendor rewrites dvc.lock with nothing else changed (README,
    "Reproducibility across machines"): its runs must not count beside the runs the committed reports
    record under the committed lock, so the study refuses before any DVC process starts."""
    committed_baseline(tmp_path, monkeypatch)
    Path("dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert S.changed_inputs() == []  # dvc.lock is no input: it is what the inputs made
    problem = S.baseline_problem()
    assert problem and problem.startswith("dvc.lock differs from the committed one") and "another vendor" in problem
    assert not Path(".dvc").exists()
