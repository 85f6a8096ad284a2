"""`python -m pipeline.study NAME`: a named study of studies.yaml, run as DVC experiments, reported.

    python -m pipeline.study ratio            check, queue every variant x seed, run the queue, report
    python -m pipeline.study ratio --plan     print one self-contained command per variant x seed
    python -m pipeline.study ratio --report   the report alone, from `dvc exp show --json`
    python -m pipeline.study ratio --pull origin   `dvc exp pull` what ran elsewhere, then report
    python -m pipeline.study branch --chain-seeds 3 --values 0.0,0.8   two more whole chains for two variants

Everything is checked before anything is queued: the study name, the YAML, every param key and
every value (each variant's params go through the same schema check as params.yaml). A variant x
seed is the DVC experiment `<study>-<value>-s<seed>`: `-S <param>=<value> -S study.seed=<seed>`
plus the study's `fixed` params. With `study.chain_seeds` above 1, chain c > 0 adds the runs
`<study>-<value>-c<c>-s<seed>` with `-S seed=<seed + c>`: whole chains (world, encoder, text run)
of their own, shared by the variants. Runs already done are not queued again: experiments of any
commit with HEAD's dvc.lock, and the runs recorded in the committed `reports/<study>/metrics.json`
under the same dvc.lock, so a study that was stopped picks up where it was, in this clone or another.
The queue runs one experiment at a time (`dvc queue start -j 1`); a failed one is reported and the
others go on. Shared upstream stages (text-pretrain)
are never re-run for chain 0: DVC skips them because their params and deps are those of the
committed baseline, and the report counts, from each experiment's DVC log, where text-pretrain ran.

The report (`reports/<study>/`): `report.md` (per variant: params, then mean ± sd over the runs of
every score; where chains were repeated, the spread split into study and chain seeds; and each of
the paper's findings the study touches, tested by pipeline/verdicts.py: difference, confidence
interval, test and p-value, the difference the study could have detected, verdict at
`study.alpha`), `metrics.json` (the same numbers, and every run: params, scores, wall minutes, under
the pipeline's dvc.lock hash; re-written after each finished run) and `<study>.png`
(the paper's style: the swept param on x, vision and text stable scores with sd error bars,
per-task accuracies; re-warmed cooldowns marked).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from pipeline import findings, verdicts
from pipeline.findings import REPORTS, _p, finding_rows  # noqa: F401 (_p: the report's p-values)
from vlm.config import ALL_KEYS, PARAMS_FILE, ParamError, parse

STUDIES_FILE = Path("studies.yaml")
SCORES = ("vision_stable", "text_stable", "stable_mean")
WORKER_LOGS = Path(".dvc/tmp/exps/celery")  # where DVC's queue keeps its Celery worker's log (`*.out`)
WORKER_RESTARTS = 3  # a study re-starts a worker that died of an error at most this often


class StudyError(ValueError):
    """studies.yaml, a study's name, param or value is wrong: found before anything is queued."""


@dataclass(frozen=True)
class Finding:
    claim: str
    metric: str
    better: Any
    worse: Any


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    param: str
    values: list
    fixed: dict = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    """One variant x seed: a DVC experiment."""

    name: str
    value: Any
    seed: int  # the study seed
    sets: dict
    chain: int = 0  # the chain seed: `seed` + chain is the whole chain's seed

    @property
    def key(self) -> str:
        """The run's seeds, e.g. "c0-s2": runs of two variants with the same key are paired."""
        return f"c{self.chain}-s{self.seed}"

    def args(self) -> list[str]:
        return [a for k, v in self.sets.items() for a in ("-S", f"{k}={_yaml_value(v)}")]


def _yaml_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, bool) else str(v)


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", _yaml_value(value))


# ---- reading and checking ------------------------------------------------------------------------

def load_studies(path: Path = STUDIES_FILE) -> dict[str, Study]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise StudyError(f"{path}: file not found") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StudyError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(raw, dict) or not raw:
        raise StudyError(f"{path}: expected a mapping of study names to studies")
    studies, errors = {}, []
    for name, spec in raw.items():
        where = f"{path}: study `{name}`"
        if not isinstance(spec, dict) or not isinstance(spec.get("param"), str) or not isinstance(
                spec.get("values"), list) or not spec["values"]:
            errors.append(f"{where}: needs `param` (a dotted params key) and a non-empty list `values`")
            continue
        if unknown := set(spec) - {"title", "param", "values", "fixed", "findings"}:
            errors.append(f"{where}: unknown keys {sorted(unknown)} (title, param, values, fixed, findings)")
        findings = []
        for j, f in enumerate(spec.get("findings") or []):
            if not isinstance(f, dict) or {"claim", "metric", "better", "worse"} - set(f):
                errors.append(f"{where}: finding {j} needs claim, metric, better and worse")
                continue
            if f["better"] not in spec["values"] or f["worse"] not in spec["values"]:
                errors.append(f"{where}: finding {j} compares values that are not in `values`")
            findings.append(Finding(f["claim"], f["metric"], f["better"], f["worse"]))
        studies[name] = Study(str(name), spec.get("title", str(name)), spec["param"], spec["values"],
                              spec.get("fixed") or {}, findings)
    if errors:
        raise StudyError("\n".join(errors))
    return studies


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    """`raw[a][b] = value` for the dotted key `a.b` of a params mapping."""
    node = raw
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[p]
    node[last] = value


def runs_of(study: Study, params_file: Path = Path(PARAMS_FILE), chain_seeds: int | None = None,
            values: list | None = None) -> list[Run]:
    """Every variant x seed, each checked against the params schema; StudyError lists the problems.
    `chain_seeds` (default `study.chain_seeds`) and `values` (default every one) pick fewer or more."""
    base = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    cfg = parse(base, str(params_file))
    chains = cfg.study.chain_seeds if chain_seeds is None else chain_seeds
    if chains < 1:
        raise StudyError(f"study `{study.name}`: chain seeds must be at least 1, got {chains}")
    if values is not None and (unknown := [v for v in values if v not in study.values]):
        raise StudyError(f"study `{study.name}`: {', '.join(map(_yaml_value, unknown))} not among its values "
                         f"({', '.join(map(_yaml_value, study.values))})")
    leaves = {k for k in ALL_KEYS if "[]" not in k and not any(o.startswith(k + ".") for o in ALL_KEYS)}
    errors = [f"study `{study.name}`: `{k}` is not a params key" for k in [study.param, *study.fixed]
              if k not in leaves]
    errors += [f"study `{study.name}`: `{k}` is set by the runner (`study.repeats`, `study.chain_seeds`), "
               "not by a study" for k in [study.param, *study.fixed] if k in ("seed", "study.seed")]
    if errors:
        raise StudyError("\n".join(errors))
    runs = []
    for value in study.values if values is None else [v for v in study.values if v in values]:
        sets = {**study.fixed, study.param: value}
        raw = json.loads(json.dumps(base))
        for k, v in sets.items():
            set_dotted(raw, k, v)
        try:
            parse(raw, f"study `{study.name}`, {study.param}={_yaml_value(value)}")
        except ParamError as e:
            errors.append(str(e))
            continue
        for chain in range(chains):  # chain 0 is the committed text run: names without -c0
            tag = f"-c{chain}" if chain else ""
            chain_sets = {"seed": cfg.seed + chain} if chain else {}
            runs += [Run(f"{study.name}-{_slug(value)}{tag}-s{seed}", value, seed,
                         {**sets, **chain_sets, "study.seed": seed}, chain) for seed in range(cfg.study.repeats)]
    if errors:
        raise StudyError("\n".join(errors))
    return runs


# ---- running -------------------------------------------------------------------------------------

def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if check and proc.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def same_pipeline_commits(limit: int = 100) -> list[str]:
    """HEAD and the first-parent commits before it that hold the same dvc.lock: every stage's deps,
    params and outputs alike, so experiments queued on any of them ran the pipeline HEAD would run
    (a README fix committed mid-study keeps the study's runs)."""
    lock = pipeline_id()
    out = []
    for sha in git("rev-list", "--first-parent", f"--max-count={limit}", "HEAD").split():
        if subprocess.run(["git", "rev-parse", "-q", "--verify", f"{sha}:dvc.lock"], capture_output=True,
                          text=True).stdout.strip() != lock:
            break
        out.append(sha)
    return out


def pipeline_id() -> str:
    """The git hash of HEAD's dvc.lock: runs recorded under the same one ran the same pipeline."""
    return git("rev-parse", "HEAD:dvc.lock").strip()


# Earlier dvc.lock versions whose recorded runs count as this pipeline's: each was replaced only by a
# change to code that cannot change a result (a retry, a rename), declared with why, and in each every
# stage's command, params and outputs are HEAD's (`same_results`; tests/test_study.py checks every one).
SAME_RESULTS_FILE = REPORTS / "same_results.yaml"


def pipeline_ids() -> set[str]:
    """`pipeline_id` and the earlier locks declared in SAME_RESULTS_FILE that are in this repository's
    history and give HEAD's results (`same_results`): a declaration copied into another repository
    (the tests' tiny ones) or outdated by a later change of results counts for nothing."""
    ids = {pipeline_id()}
    declared = yaml.safe_load(SAME_RESULTS_FILE.read_text(encoding="utf-8")) if SAME_RESULTS_FILE.exists() else []
    if not declared:
        return ids
    head = yaml.safe_load(git("show", "HEAD:dvc.lock"))
    for entry in declared:
        old = subprocess.run(["git", "cat-file", "-p", entry["lock"]], capture_output=True, text=True)
        if old.returncode == 0 and not same_results(yaml.safe_load(old.stdout), head):
            ids.add(entry["lock"])
    return ids


def same_results(old: dict, new: dict) -> list[str]:
    """What differs between two parsed dvc.lock files beyond the hashes of code and input deps: each
    stage's command, params, outputs, and the deps that are other stages' outputs. [] = the same
    results, whatever code changed."""
    old, new = old.get("stages") or {}, new.get("stages") or {}
    outputs = {o["path"] for st in new.values() for o in st.get("outs", [])}
    problems = [f"stage {s}: only in one lock" for s in sorted(old.keys() ^ new.keys())]
    for name in sorted(old.keys() & new.keys()):
        a, b = old[name], new[name]
        for key in ("cmd", "params", "outs"):
            if a.get(key) != b.get(key):
                problems.append(f"stage {name}: its {key} differ")
        data = [[d for d in st.get("deps", []) if d["path"] in outputs] for st in (a, b)]
        if data[0] != data[1] or {d["path"] for d in a.get("deps", [])} != {d["path"] for d in b.get("deps", [])}:
            problems.append(f"stage {name}: its deps differ beyond code")
    return problems


def experiments(finished: bool = True) -> dict[str, dict]:
    """{experiment name: its `dvc exp show --json` revision data} of the baseline commits
    (`same_pipeline_commits`): those that finished well, or with `finished=False` every one that
    exists, queued and running ones too (a running one shows the workspace's metrics).

    The baseline is named by its commit: for `HEAD`, DVC reads refs/exps/exec/EXEC_BASELINE when that
    exists, and a workspace `dvc exp run` that was killed leaves it behind, pointing at an old commit
    (seen here: the report would have been made of that commit's experiments)."""
    commits = same_pipeline_commits()
    out = {}
    for rev in json.loads(dvc("exp", "show", "--json", "--rev", commits[0], "-n", str(len(commits))).stdout):
        if rev.get("rev") not in commits:
            continue
        for exp in rev.get("experiments") or []:
            data = exp["revs"][0]
            state = (exp.get("executor") or {}).get("state")  # none once its git ref is all that is left
            if data.get("data") and (not finished or state in (None, "success")):
                out[exp["name"]] = data
    return out


def stage_params(dvc_file: Path = Path("dvc.yaml")) -> set[str]:
    """The params keys (dotted; a section stands for every key under it) that some stage lists."""
    stages = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["stages"]
    return {k for st in stages.values() for p in st.get("params", [])
            for k in (p if isinstance(p, dict) else [p]) if isinstance(k, str)}


def effective_params(sets: dict, params: dict, read: set[str]) -> dict[str, Any]:
    """{dotted key: value} of every param a stage reads (`read`, from `stage_params`) in a run with
    these `-S` sets over `params` (params.yaml as loaded): two runs alike in these ran the same
    experiment, whatever the runner's own keys (`study.repeats`, `study.chain_seeds`, `study.alpha`) say."""
    raw = copy.deepcopy(params)
    for k, v in sets.items():
        set_dotted(raw, k, v)
    return {k: v for k, v in _leaves(raw).items() if any(k == r or k.startswith(r + ".") for r in read)}


def recorded(study: Study, runs: list[Run]) -> dict[str, dict]:
    """{run name: row} of the runs that the committed reports record under this pipeline (`pipeline_ids`:
    its dvc.lock, or an earlier one declared to give the same results) with the same params: a study
    that ran in parts, in other clones, resumes from its committed report (DVC's experiments live in
    one clone's git refs and cache). A run of another study that ran with every param the same (its
    `-S` sets over params.yaml: the default's seeds are in most studies) is the same experiment: it is
    taken, named as this study's run, with `from` naming where it ran; this study's own record comes
    first."""
    params, read = yaml.safe_load(Path(PARAMS_FILE).read_text(encoding="utf-8")), stage_params()

    def key(sets: dict) -> str:
        return json.dumps(effective_params(sets, params, read), sort_keys=True)

    wanted, locks = {key(r.sets): r for r in runs}, pipeline_ids()
    found: dict[str, dict] = {}
    for path in sorted(REPORTS.glob("*/metrics.json"), key=lambda p: (p.parent.name != study.name, p.parent.name)):
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept.get("baseline", {}).get("dvc.lock") not in locks:
            continue
        for row in kept.get("runs", []):
            r = wanted.get(key(row.get("sets") or {}))
            if r is None or r.name in found:
                continue
            here = path.parent.name == study.name and row.get("run") == r.name
            found[r.name] = row if here else {
                **row, "run": r.name, "value": r.value, "seed": r.seed, "chain": r.chain, "key": r.key,
                "sets": r.sets, "from": row.get("from") or f"{path.parent.name}/{row.get('run')}"}
    return found


def queue_status() -> tuple[dict[str, str], int | None]:
    """({experiment name: Queued / Running / Success / Failed}, active workers) from `dvc queue
    status` (workers None where its last line does not say)."""
    status, workers = {}, None
    for line in dvc("queue", "status").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] != "Task" and re.fullmatch(r"[0-9a-f]{7}", parts[0]):
            status[parts[1]] = parts[-1]
        elif m := re.match(r"Worker status: (\d+) active", line):
            workers = int(m.group(1))
    return status, workers


def current_stage(name: str) -> str:
    stages = re.findall(r"Running stage '([^']+)'", dvc("queue", "logs", name, check=False).stdout)
    return stages[-1] if stages else "starting"


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a nested mapping (lists are values)."""
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    return {k: v for key, sub in node.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}


def git(*args: str) -> str:
    """`git ARGS` in the working directory; its stdout (fails on a non-zero exit)."""
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def changed_inputs(params_file: str = PARAMS_FILE) -> list[str]:
    """What differs from the last commit among the files every experiment starts from: each changed
    key of params.yaml, and every other changed git-tracked stage dependency (dvc.yaml itself and the
    code every stage lists). `dvc exp run --queue` copies the workspace into each experiment, so a
    leftover `-S vision.blank_images=true` would silently make every run of a study the blind control."""
    problems = []
    try:
        committed = _leaves(yaml.safe_load(git("show", f"HEAD:{params_file}")) or {})
    except subprocess.CalledProcessError as e:
        return [f"no committed {params_file} to start from (`git show HEAD:{params_file}`: {e.stderr.strip()})"]
    current = _leaves(yaml.safe_load(Path(params_file).read_text(encoding="utf-8")) or {})
    for key in sorted(committed.keys() | current.keys()):
        if committed.get(key, "(absent)") != current.get(key, "(absent)"):
            problems.append(f"{params_file}: `{key}` is {_yaml_value(current.get(key, '(absent)'))}, "
                            f"committed {_yaml_value(committed.get(key, '(absent)'))}")
    stages = yaml.safe_load(Path("dvc.yaml").read_text(encoding="utf-8"))["stages"]
    deps = sorted({"dvc.yaml", *(d for st in stages.values() for d in st.get("deps", []))} - {params_file})
    for line in git("status", "--porcelain", "--untracked-files=all", "--", *deps).splitlines():
        problems.append(f"{line[3:]}: {'not committed' if line.startswith('??') else 'changed since the last commit'}")
    return problems


def baseline_problem() -> str | None:
    """Experiments start from the last commit and reuse its stages' outputs: the workspace's inputs must
    be that commit's (`changed_inputs`), its dvc.lock too (`recorded` takes the committed reports' runs
    as done under the committed lock), and it must be reproduced (`dvc status` clean), or every
    experiment would train its own text run."""
    if changed := changed_inputs():
        return ("the workspace differs from the last commit, and every queued run would carry the change:\n  "
                + "\n  ".join(changed) + "\ncommit it, or restore it (`git checkout -- FILE`), then start the "
                "study again; run single variants with `dvc exp run --queue -S ...` or `--temp`, which leave "
                "params.yaml as it is")
    if git("status", "--porcelain", "--", "dvc.lock").strip():
        return ("dvc.lock differs from the committed one, and the committed reports record their runs under "
                "the committed lock: commit it first (every study then runs anew on it). If `dvc repro` changed "
                "it while nothing else changed, this machine does not reproduce the committed results (a CPU "
                "of another vendor rounds differently: README, \"Reproducibility across machines\"), and its "
                "runs would not be the committed reports' runs: run the study on a machine that reproduces "
                "them, or commit this lock")
    if json.loads(dvc("status", "--json").stdout or "{}"):
        return "the workspace is not reproduced: run `dvc repro` and commit dvc.lock first"
    return None


def to_run(study: Study, runs: list[Run], done: set[str]) -> list[Run]:
    """The runs not done, in queue order: first the variants the paper's findings compare, so a study
    stopped part-way already has its verdicts."""
    judged = {_yaml_value(v) for f in study.findings for v in (f.better, f.worse)}
    return sorted((r for r in runs if r.name not in done), key=lambda r: _yaml_value(r.value) not in judged)


def run_study(study: Study, runs: list[Run], poll: float = 60.0, alpha: float = verdicts.ALPHA) -> list[str]:
    """Queue the runs not yet done (`experiments`, `recorded`), run the queue, show progress every
    `poll` seconds and re-write the report after each finished run (so a study stopped at any point
    keeps what it did); returns the failed runs. A worker that died of an error (its log says which)
    is started again; one stopped by `dvc queue stop` ends the wait, naming the runs left queued.

    Each look at the queue starts two `dvc` processes (about a second of CPU each), so a short
    `poll` would take a good part of a small machine away from the training it watches; and the
    status query is what can race with the worker (treeverse/dvc-task#73): a run takes minutes, a
    look a minute is enough."""
    todo = to_run(study, runs, experiments(finished=False).keys() | recorded(study, runs).keys())
    print(f"study {study.name}: {len(runs)} runs ({len(runs) - len(todo)} already done), one at a time", flush=True)
    for r in todo:
        dvc("exp", "run", "--queue", "-n", r.name, *r.args())
    if not todo:
        return []
    logs, restarts = start_queue(), 0
    t0, last = time.time(), ""
    mark = None  # when the run now going began: the first seen running, then each one's end
    minutes: dict[str, float] = {}  # wall minutes of each run that finished while watched
    names, idle = {r.name for r in todo}, 0
    while True:
        status, workers = queue_status()
        status = {n: s for n, s in status.items() if n in names}
        running = [n for n, s in status.items() if s == "Running"]
        ended = [n for n, s in status.items() if s in ("Success", "Failed") and n not in minutes]
        if mark is None and (running or ended):  # ended unseen: it began with the queue
            mark = t0 if ended else time.time()
        if ended:  # each run's end from its experiment's commit time: two can end within one poll
            ends = {n: _finished_at(n, time.time()) for n in ended}
            for n in sorted(ended, key=ends.get):
                minutes[n], mark = max(ends[n] - mark, 0.0) / 60, max(ends[n], mark)
            if any(status[n] == "Success" for n in ended):
                report(study, runs, alpha=alpha, minutes=minutes)
        left = len(todo) - len(minutes)
        eta = (f", about {sum(minutes.values()) / len(minutes) * left:.0f} min left at the mean so far"
               if minutes and left else "")
        line = (f"[{len(minutes)}/{len(todo)}] " + (f"{running[0]}: {current_stage(running[0])}" if running else "")
                + f" ({(time.time() - t0) / 60:.1f} min{eta})")
        if line.split(" (")[0] != last:
            print(line, flush=True)
            last = line.split(" (")[0]
        if len(minutes) == len(todo) or (not running and not any(s == "Queued" for s in status.values())):
            break
        idle = idle + 1 if workers == 0 and not running else 0
        if idle >= 2:  # two looks in a row: a worker just started or ending is not taken for a stopped queue
            left = sorted(n for n, s in status.items() if s == "Queued")
            if (crash := worker_crash(logs)) and restarts < WORKER_RESTARTS:
                restarts += 1
                print(f"study {study.name}: the DVC queue worker died ({crash}) with {len(left)} runs queued: "
                      f"started again ({restarts} of at most {WORKER_RESTARTS}; Celery's file broker can hand "
                      "the worker an empty message, treeverse/dvc-task#73)", flush=True)
                logs, idle = start_queue(), 0
                continue
            print(f"study {study.name}: the queue was stopped (`dvc queue stop`) with {len(left)} runs queued "
                  f"({', '.join(left)}): `dvc queue remove --queued`, then this study again runs them", flush=True)
            return []
        time.sleep(poll)
    failed = sorted(n for n, s in status.items() if s != "Success")
    for n in failed:
        print(f"study {study.name}: {n} failed; `dvc queue logs {n}` shows why", flush=True)
    return failed


def start_queue() -> dict[Path, int]:
    """`dvc queue start -j 1`; returns the size of each worker log before it, for `worker_crash`."""
    logs = {path: path.stat().st_size for path in WORKER_LOGS.glob("*.out")}
    # The worker it starts lives on and would hold a pipe open: its output goes to a file instead.
    with tempfile.TemporaryFile() as log:
        if subprocess.run(["dvc", "queue", "start", "-j", "1"], stdout=log, stderr=log).returncode:
            log.seek(0)
            raise RuntimeError(f"dvc queue start failed:\n{log.read().decode(errors='replace')}")
    return logs


def worker_crash(since: dict[Path, int]) -> str | None:
    """The error that ended the queue's worker, from what its log gained after `since` (start_queue);
    None where it ended as asked (`dvc queue stop`: "Got shutdown from remote") or said nothing."""
    crash = None
    for path in sorted(WORKER_LOGS.glob("*.out")):
        with path.open("rb") as f:
            f.seek(since.get(path, 0))
            for line in f.read().decode(errors="replace").splitlines():
                if "Got shutdown from remote" in line:
                    crash = None
                elif m := re.search(r"Unrecoverable error: (.+)", line):
                    crash = m.group(1).strip()
    return crash


def _finished_at(name: str, default: float) -> float:
    """When experiment `name` ended: its commit's time (`dvc exp show`, to the second), else `default`."""
    stamp = (experiments(finished=False).get(name) or {}).get("data", {}).get("timestamp")
    return datetime.fromisoformat(stamp).timestamp() if stamp else default


# ---- reporting -----------------------------------------------------------------------------------

def _metric(data: dict, file: str, *path: str) -> Any:
    node = data["metrics"].get(file, {}).get("data", {})
    for p in path:
        node = node.get(p, {}) if isinstance(node, dict) else {}
    return node if node != {} else None


def collect(study: Study, runs: list[Run], minutes: dict[str, float] | None = None) -> list[dict]:
    """One row per finished run: its name, value, seeds and params, the scores and per-task
    accuracies, the cooldown's LR mode, whether its DVC log shows text-pretrain running (None: no log
    here) and its wall minutes (None: not timed). Runs of this clone's experiments come first; the
    others from the committed report (`recorded`)."""
    exps, kept, rows = experiments(), recorded(study, runs), []
    for r in runs:
        if r.name not in exps:
            if r.name in kept:
                rows.append({**kept[r.name], "value": r.value})
            continue
        data = exps[r.name]["data"]
        log = dvc("queue", "logs", r.name, check=False).stdout
        row = {"run": r.name, "value": r.value, "seed": r.seed, "chain": r.chain, "key": r.key, "sets": r.sets,
               "lr_mode": _metric(data, "metrics/cooldown.json", "lr_mode"),
               "text_pretrain": ("Running stage 'text-pretrain'" in log
                                 if "Running stage" in log or "didn't change" in log else None),
               "minutes": (minutes or {}).get(r.name, kept.get(r.name, {}).get("minutes")),
               # the CPU it was first recorded on: a workspace can outlive its machine
               "cpu": kept.get(r.name, {}).get("cpu") or this_cpu()}
        for s in SCORES:
            row[s] = _metric(data, "metrics/eval.json", s)
        for task, t in (_metric(data, "metrics/eval.json", "tasks") or {}).items():
            row[f"{task}_accuracy"] = t.get("accuracy")
        rows.append(row)
    return rows


def this_cpu() -> str:
    """The CPU this clone's runs ran on, e.g. "AMD EPYC, family 25 model 1, AVX2": a study that runs in
    parts may run on several kinds, whose float rounding can differ (README, "Reproducibility")."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return platform.processor() or platform.machine()
    field_ = dict(line.split(":", 1) for line in info.split("\n\n")[0].splitlines() if ":" in line)
    field_ = {k.strip(): v.strip() for k, v in field_.items()}
    simd = "AVX-512" if "avx512f" in field_.get("flags", "").split() else "AVX2" if "avx2" in field_.get(
        "flags", "").split() else "no AVX2"
    return f"{field_.get('model name', platform.machine())}, family {field_.get('cpu family', '?')} " \
           f"model {field_.get('model', '?')}, {simd}"


def mean_sd(xs: list[float]) -> tuple[float, float, int]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return math.nan, math.nan, 0
    m, var = verdicts.mean_var(xs)
    return m, math.sqrt(var), len(xs)


def summarise(study: Study, rows: list[dict]) -> dict:
    """{value: {metric: {mean, sd, n, runs: {run seeds: score}, spread}, rewarm}} over each variant's
    runs; `spread` splits the sd into study seeds and chain seeds (verdicts.spread)."""
    metrics = sorted({k for r in rows for k in r if k in SCORES or k.endswith("_accuracy")})
    out = {}
    for value in study.values:
        mine = [r for r in rows if r["value"] == value]
        if not mine:
            continue
        variant: dict[str, Any] = {}
        for m in metrics:
            scored = [r for r in mine if r.get(m) is not None]
            mean, sd, n = mean_sd([r[m] for r in scored])
            variant[m] = {"mean": mean, "sd": sd, "n": n, "runs": {r["key"]: r[m] for r in scored},
                          "spread": verdicts.spread({(r["chain"], r["seed"]): r[m] for r in scored})}
        variant["rewarm"] = any(r["lr_mode"] == "rewarm" for r in mine)
        out[_yaml_value(value)] = variant
    return out


def judge(finding: Finding, summary: dict, alpha: float = verdicts.ALPHA) -> dict:
    """The finding tested on our runs: the comparison (verdicts.compare), its verdict at `alpha`, and
    "ours", the two sides' mean ± sd (n) as the report prints them."""
    b, w = summary.get(_yaml_value(finding.better)), summary.get(_yaml_value(finding.worse))
    out = {"claim": finding.claim, "metric": finding.metric, "better": _yaml_value(finding.better),
           "worse": _yaml_value(finding.worse), "alpha": alpha}
    if not b or not w or finding.metric not in b or finding.metric not in w:
        return {**out, "verdict": "not run", "ours": "-"}
    rb, rw = b[finding.metric]["runs"], w[finding.metric]["runs"]
    shared, note = verdicts.shared_seeds(rb, rw), ""
    if shared and len(shared) < max(len(rb), len(rw)):  # the runs compared are those both ran
        note = f", the seeds both ran, of {len(rb)} and {len(rw)}"
        rb, rw = {k: rb[k] for k in shared}, {k: rw[k] for k in shared}
    c = verdicts.compare(rb, rw, alpha)
    (mb, vb), (mw, vw) = verdicts.mean_var(list(rb.values())), verdicts.mean_var(list(rw.values()))
    ours = f"{_cell(mb, math.sqrt(vb))} vs {_cell(mw, math.sqrt(vw))} (n = {len(rb)}, {len(rw)}{note})"
    out = {**out, **c.to_json(), "verdict": verdicts.verdict(c, alpha), "ours": ours}
    if chains := verdicts.by_chain(rb, rw, alpha):  # a check beside the verdict, not the verdict
        out["by_chain"] = {**chains.to_json(), "verdict": verdicts.verdict(chains, alpha)}
    return out


def _cell(mean: float, sd: float) -> str:
    return f"{mean:.3f}" if math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def _finite(node: Any) -> Any:
    """JSON has no NaN or infinity: null for "no estimate" (one run), ±1e308 for a certain difference."""
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_finite(v) for v in node]
    if isinstance(node, float) and not math.isfinite(node):
        return None if math.isnan(node) else math.copysign(1e308, node)
    return node


def report(study: Study, runs: list[Run], failed: list[str] = (), alpha: float = verdicts.ALPHA,
           minutes: dict[str, float] | None = None) -> Path:
    rows = collect(study, runs, minutes)
    summary = summarise(study, rows)
    judged = [judge(f, summary, alpha) for f in study.findings]
    folder = REPORTS / study.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(_finite({
        "alpha": alpha, "variants": summary, "findings": judged,
        "baseline": {"commit": git("rev-parse", "HEAD").strip(), "dvc.lock": pipeline_id()},
        "planned_runs": len(runs), "runs": rows}),
        indent=2, sort_keys=True) + "\n")
    logged = [row for row in rows if row["text_pretrain"] is not None]
    ran_text = [row for row in logged if row["text_pretrain"]]
    elsewhere = len(rows) - len(logged)
    taken = [row["from"] for row in rows if row.get("from")]
    timed = [row["minutes"] for row in rows if row["minutes"] is not None and not row.get("from")]
    timing = (f" The {len(timed)} runs took {sum(timed):.1f} min here, {sum(timed) / len(timed):.1f} min per run."
              if timed else "")
    if taken:
        timing += (f" {len(taken)} ran with the same params in other studies and are taken from their reports"
                   f" ({', '.join(taken)}).")
    if rows:
        cpus = Counter(row.get("cpu") or "not recorded" for row in rows)
        timing += " CPUs: " + "; ".join(f"{c} ({n} runs)" for c, n in sorted(cpus.items())) + "."
    metrics = [m for m in (*SCORES, *sorted({k for v in summary.values() for k in v if k.endswith("_accuracy")}))
               if any(m in v for v in summary.values())]
    lines = [f"# Study `{study.name}`: {study.title}", "",
             f"`{study.param}` over {', '.join(map(_yaml_value, study.values))}"
             + (f", with {', '.join(f'`{k}`={_yaml_value(v)}' for k, v in study.fixed.items())}" if study.fixed else "")
             + f"; {len(rows)} of {len(runs)} runs finished (mean ± sd over each variant's n runs: "
             + f"{_seeds(runs)}; every run's value in metrics.json).",
             f"text-pretrain ran in {len(ran_text)} of the {len(logged)} runs with a DVC log"
             + (f" ({elsewhere} ran elsewhere)" if elsewhere else "") + "." + timing, "",
             "| " + study.param + " | n | " + " | ".join(metrics) + " |",
             "|---" * (len(metrics) + 2) + "|"]
    for value, stats in summary.items():
        mark = " (re-warmed)" if stats["rewarm"] else ""
        cells = [_cell(stats[m]["mean"], stats[m]["sd"]) if m in stats else "-" for m in metrics]
        lines.append(f"| {value}{mark} | {stats[metrics[0]]['n']} | " + " | ".join(cells) + " |")
    lines += spread_lines(summary)
    if judged:
        lines += ["", *finding_rows(judged), "", TESTS_NOTE, *chain_lines(judged)]
    if failed:
        lines += ["", "Failed runs (not in the table): " + ", ".join(failed)]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    figure(study, summary, folder / f"{study.name}.png")
    findings.write()
    return folder / "report.md"


TESTS_NOTE = ("Each claim is tested two-sided: paired by seed over the seeds both variants ran (where one "
              "ran more chains, its other runs are left out of that test), else Welch's t. *Detectable*: "
              "the smallest difference the same test finds with 80 % power at that level, from the "
              "observed spread (pipeline/verdicts.py).")


def chain_lines(judged: list[dict]) -> list[str]:
    """The findings tested again over whole chains (`verdicts.by_chain`), where both sides ran two or more."""
    checked = [j for j in judged if j.get("by_chain")]
    if not checked:
        return []
    lines = ["", "Over whole chains (each chain's mean difference, paired across the chains both variants ran: "
             "runs of one chain share a text run, which the test above treats as independent):"]
    for j in checked:
        c = j["by_chain"]
        lines.append(f"- {j['claim']} ({j['metric']}): {c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] "
                     f"({round((1 - j['alpha']) * 100)}% CI) over {c['n'][0]} chains, paired t, {_p(c['p'])}: "
                     f"{c['verdict']} (α = {j['alpha']:g})")
    return lines


def _seeds(runs: list[Run]) -> str:
    chains, seeds = len({r.chain for r in runs}), len({r.seed for r in runs})
    if chains == 1:
        return f"{seeds} study seeds sharing one text run"
    chained = [v for v in dict.fromkeys(r.value for r in runs) if len({r.chain for r in runs if r.value == v}) > 1]
    if len(chained) == len({_yaml_value(r.value) for r in runs}):
        return f"{seeds} study seeds in each of {chains} chains (whole text runs)"
    return (f"{seeds} study seeds in each of {chains} chains (whole text runs) for "
            f"{', '.join(map(_yaml_value, chained))}, in one chain for the others")


def spread_lines(summary: dict) -> list[str]:
    """Where variants ran more than one chain: the sd of each stable score split into study seeds
    (within a text run) and chain seeds (between text runs), averaged over the variants (as variances)."""
    if not any(v[s]["spread"]["chains"] > 1 for v in summary.values() for s in SCORES if s in v):
        return []
    lines = ["", "| spread (sd, mean over variants) | within a text run (study seeds) "
             "| between text runs (chain seeds) |", "|---|---|---|"]
    for s in SCORES:
        parts = [v[s]["spread"] for v in summary.values() if s in v and v[s]["spread"]["chains"] > 1]
        cells = []
        for key in ("study_seed_sd", "chain_sd"):
            var = [p[key] ** 2 for p in parts if not math.isnan(p[key])]
            cells.append(f"{math.sqrt(sum(var) / len(var)):.3f}" if var else "-")
        lines.append(f"| {s} | {cells[0]} | {cells[1]} |")
    return lines


def figure(study: Study, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(summary)
    pos = range(len(xs))
    tasks = sorted({k for v in summary.values() for k in v if k.endswith("_accuracy")})
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(4 * (1 + len(tasks)), 3.2), squeeze=False)
    ax = axes[0][0]
    for metric, colour in (("vision_stable", "tab:blue"), ("text_stable", "tab:orange")):
        if all(metric in summary[x] for x in xs):
            ax.errorbar(pos, [summary[x][metric]["mean"] for x in xs], yerr=[summary[x][metric]["sd"] for x in xs],
                        marker="o", capsize=3, color=colour, label=metric)
    for i, x in enumerate(xs):
        if summary[x]["rewarm"]:
            ax.axvspan(i - 0.3, i + 0.3, color="grey", alpha=0.15, lw=0)
    ax.set_ylabel("stable score")
    ax.legend(fontsize=8)
    for ax, task in zip(axes[0][1:], tasks, strict=True):
        ax.errorbar(pos, [summary[x][task]["mean"] for x in xs], yerr=[summary[x][task]["sd"] for x in xs],
                    marker="o", capsize=3, color="tab:green")
        ax.set_title(task.removesuffix("_accuracy"), fontsize=9)
        ax.set_ylabel("accuracy")
    for ax in axes[0]:
        ax.set_xticks(list(pos), xs)
        ax.set_xlabel(study.param)
    fig.suptitle(f"{study.title} (shaded: cooldown re-warmed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


# ---- the command -------------------------------------------------------------------------------

def plan(study: Study, runs: list[Run], remote: str = "origin") -> str:
    """One self-contained command per run, for a job array: in a clone at this commit (inside
    `containers/run` on a cluster), fetch the baseline's outputs, run the variant in a temporary
    copy, and push the experiment (git refs and DVC outputs) back to `remote`."""
    return "\n".join(f"dvc pull -q && dvc exp run --temp -n {r.name} {' '.join(r.args())} && "
                     f"dvc exp push {remote} {r.name}" for r in runs)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.study", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help=f"a study of {STUDIES_FILE}")
    parser.add_argument("--plan", action="store_true", help="print one command per variant x seed, run nothing")
    parser.add_argument("--report", action="store_true", help="only the report, from `dvc exp show --json`")
    parser.add_argument("--pull", metavar="REMOTE", help="`dvc exp pull REMOTE` each run first, then report")
    parser.add_argument("--chain-seeds", type=int, metavar="N",
                        help="whole chains per variant, for the variants of --values (default study.chain_seeds)")
    parser.add_argument("--values", metavar="V,V,...",
                        help="with --chain-seeds: the variants that get the extra chains (default every one); "
                             "the others keep study.chain_seeds")
    parser.add_argument("--poll", type=float, default=60.0, metavar="SECONDS",
                        help="seconds between looks at the queue for the progress line (default 60)")
    args = parser.parse_args(argv)
    try:
        studies = load_studies()
        if args.name not in studies:
            raise StudyError(f"{STUDIES_FILE}: no study `{args.name}`; studies: {', '.join(studies)}")
        study = studies[args.name]
        runs = runs_of(study)
        if args.values and args.chain_seeds is None:
            raise StudyError("--values picks the variants that --chain-seeds repeats: give --chain-seeds too")
        if args.chain_seeds is not None:
            values = None if args.values is None else [yaml.safe_load(v) for v in args.values.split(",")]
            names = {r.name for r in runs}
            runs += [r for r in runs_of(study, chain_seeds=args.chain_seeds, values=values) if r.name not in names]
        alpha = parse(yaml.safe_load(Path(PARAMS_FILE).read_text(encoding="utf-8")), PARAMS_FILE).study.alpha
    except (StudyError, ParamError) as e:
        print(e, file=sys.stderr)
        return 1
    if args.plan:
        print(plan(study, runs))
        return 0
    if args.pull:  # results run elsewhere (--plan) come back through the git remote
        for r in runs:
            dvc("exp", "pull", args.pull, r.name, check=False)
    failed: list[str] = []
    if not (args.report or args.pull):
        if problem := baseline_problem():
            print(f"study {study.name}: {problem}", file=sys.stderr)
            return 1
        failed = run_study(study, runs, args.poll, alpha)
    print(f"study {study.name}: report in {report(study, runs, failed, alpha)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
