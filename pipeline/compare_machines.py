"""`python -m pipeline.compare_machines`: does this machine give the results that other machines gave?

    python -m pipeline.compare_machines                       the committed `cpu.kernels`
    python -m pipeline.compare_machines --kernels compatible  MKL's branch for every vendor (README,
                                                              "Reproducibility across machines")

Runs the whole pipeline once with those kernels as a temporary DVC experiment (`dvc exp run --temp`:
the workspace, params.yaml and dvc.lock stay as they are; stages whose outputs are cached are not
run again), keeps its dvc.lock as `reports/machines/<kernels>/<this CPU>.lock` and compares it
with every lock kept there by other CPUs, and with the committed dvc.lock where the kernels are the
committed ones: per stage, its outputs and the data it read (`same_results`; code hashes aside).
Its header keeps the run's scores (metrics/eval.json: the experiment is removed afterwards).
Commit the lock it writes, so that the next machine compares itself with this one. The default took
10 minutes (`avx2`, data stages cached) and 19 (`compatible`) on a 2-core Intel Xeon; 17 and 24 on a slower
day of that shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from datetime import date

import yaml

from pipeline.findings import REPORTS
from pipeline.study import dvc, git, same_results, this_cpu
from vlm.config import CpuConfig, load

MACHINES = REPORTS / "machines"
EXPERIMENT = "compare-machines"


def cpu_slug(cpu: str) -> str:
    """A file name for a CPU description: "Intel(R) Xeon(R) Processor, family 6 model 167, AVX-512"
    -> "intel-xeon-processor-family-6-model-167-avx-512"."""
    return re.sub(r"[^a-z0-9]+", "-", cpu.lower().replace("(r)", "").replace("(tm)", "")).strip("-")


def experiment_file(name: str, path: str) -> str:
    """A file of the experiment `name` (DVC keeps each experiment as a git commit under refs/exps)."""
    refs = [r for r in git("for-each-ref", "--format=%(refname)", "refs/exps").split() if r.endswith("/" + name)]
    if len(refs) != 1:
        raise SystemExit(f"expected one experiment named {name}, found {len(refs)}: {refs}")
    return git("show", f"{refs[0]}:{path}")


def scores(metrics: dict) -> str:
    """The summary scores of a metrics/eval.json, each with its standard error."""
    return ", ".join(f"{k} {metrics[k]:.3f} ± {metrics[k + '_se']:.3f}"
                     for k in ("vision_stable", "text_stable", "stable_mean"))


def compare(mine: dict, others: dict[str, dict]) -> list[str]:
    """One line per other lock: the same results, or what differs."""
    lines = []
    for name, other in others.items():
        problems = same_results(other, mine)
        places = f"{len(problems)} place{'s' * (len(problems) > 1)}"
        shown = "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
        lines.append(f"  {name}: differs in {places}: {shown}" if problems else
                     f"  {name}: the same results, every stage")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    committed = load().cpu.kernels
    kernels = next(f for f in dataclasses.fields(CpuConfig) if f.name == "kernels").metadata["choices"]
    ap.add_argument("--kernels", default=committed, choices=kernels,
                    help=f"cpu.kernels of the run (default: the committed {committed})")
    args = ap.parse_args(argv)

    cpu, changed = this_cpu(), bool(git("status", "--porcelain", "--untracked-files=no").strip())
    print(f"running the pipeline with cpu.kernels={args.kernels} on {cpu} (a temporary experiment)", flush=True)
    dvc("exp", "remove", EXPERIMENT, check=False)
    run = subprocess.run(["dvc", "exp", "run", "--temp", "-n", EXPERIMENT, "-S", f"cpu.kernels={args.kernels}"])
    if run.returncode:
        print(f"the pipeline failed (exit {run.returncode}); nothing written", file=sys.stderr)
        return run.returncode
    mine = yaml.safe_load(experiment_file(EXPERIMENT, "dvc.lock"))
    scored = scores(json.loads(experiment_file(EXPERIMENT, "metrics/eval.json")))
    dvc("exp", "remove", EXPERIMENT, check=False)
    print(f"this machine's scores: {scored}")

    folder = MACHINES / args.kernels
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cpu_slug(cpu)}.lock"
    commit = git("rev-parse", "--short", "HEAD").strip() + (" with changes" if changed else "")
    header = (f"# dvc.lock of `python -m pipeline.compare_machines --kernels {args.kernels}` on {cpu},\n"
              f"# {date.today().isoformat()}, commit {commit}\n# scores: {scored}\n")
    path.write_text(header + yaml.safe_dump(mine, sort_keys=False), encoding="utf-8")
    print(f"wrote {path}")

    others = {str(p): yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.lock")) if p != path}
    head = subprocess.run(["git", "show", "HEAD:dvc.lock"], capture_output=True, text=True)
    if args.kernels == committed and head.returncode == 0:
        others["dvc.lock (committed)"] = yaml.safe_load(head.stdout)
    print("\n".join([f"compared with {len(others)} other lock(s):", *compare(mine, others)]) if others else
          f"no other machine's lock in {folder} yet: commit {path}, run this on another CPU and compare there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
