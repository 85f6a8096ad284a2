"""dvc.yaml's `deps` cover every project module each stage runs and every data product it reads.

Both are derived from the code, not listed by hand: a stage's modules are the transitive closure of
the project imports (`ast`, function-level imports included) of `pipeline/__main__.py` and the
stage's module; its data reads are the `pipeline.paths` products named in that code (data/* that
the stage does not write itself). A change to any of them must re-run the stage.
"""

from __future__ import annotations

import ast
import copy
import re
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from pipeline import paths
from pipeline.__main__ import LAUNCHED, STAGES

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("vlm", "pipeline")
PRODUCTS = {name: value for name, value in vars(paths).items() if isinstance(value, Path)}


def module_file(name: str) -> Path | None:
    """The file of a project module or package (relative to the repo root), None outside the project."""
    if name.split(".")[0] not in PROJECT:
        return None
    base = Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (ROOT / candidate).is_file():
            return candidate
    return None


def imports_in(tree: ast.AST, current: str) -> set[str]:
    """Module names imported anywhere in `tree` (`from a import b` yields a.b too, if b is a module)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parent = current.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


@cache
def closure(module: str) -> frozenset[Path]:
    """Every project file that importing `module` executes: its imports, transitively, and the
    `__init__.py` of every package on the way."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # a.b.c runs a/__init__, a/b/__init__ and a/b/c
            path = module_file(".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            full = ".".join(parts[:i]) if path.name != "__init__.py" else ".".join(parts[:i]) + ".__init__"
            todo += imports_in(ast.parse((ROOT / path).read_text()), full.removesuffix(".__init__"))
    return frozenset(seen)


def stage_files(stage: str) -> set[Path]:
    return set(closure("pipeline.__main__")) | set(closure(STAGES[stage]))


def products_named(files: set[Path]) -> set[Path]:
    """The `pipeline.paths` products (data/*) and user input folders (inputs/*) named in `files`
    outside pipeline/paths.py."""
    names = set()
    for f in files:
        if f == Path("pipeline/paths.py"):
            continue
        for node in ast.walk(ast.parse((ROOT / f).read_text())):
            if isinstance(node, ast.Name) and node.id in PRODUCTS:
                names.add(node.id)
            elif isinstance(node, ast.alias) and node.name in PRODUCTS:
                names.add(node.name)
    return {PRODUCTS[n] for n in names if PRODUCTS[n].parts[0] in ("data", "inputs")}


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


def missing_deps(stage: str, spec: dict) -> list[str]:
    """What `stage` runs or reads that its `deps` in `spec` (a parsed dvc.yaml) do not cover."""
    st = spec["stages"][stage]
    deps = [str(d) for d in st.get("deps", [])]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in st.get("outs", [])]
    files = stage_files(stage)
    code = [str(f) for f in sorted(files) if not covered(f, deps)]
    data = [str(p) for p in sorted(products_named(files)) if not covered(p, deps) and not covered(p, outs)]
    return code + data


def dvc_spec() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_runs_through_the_dispatcher():
    """Every stage's command is `python -m pipeline STAGE`. Those that split their work over
    processes (training: the batch, `per_rank`; evaluate: the items, gathered with
    `all_gather_object`) are the ones it hands to Composer's launcher (LAUNCHED) with `train.nproc`
    processes, and list `train` (or `train.nproc`) as a param; the others run in one plain process."""
    spec = dvc_spec()
    assert set(spec["stages"]) == set(STAGES)
    splitters = {"per_rank(", "all_gather_object("}
    code = {s: (ROOT / f"{mod.replace('.', '/')}.py").read_text() for s, mod in STAGES.items()}
    launched = {s for s in STAGES if splitters & set(_calls(code[s]))}
    assert launched == set(LAUNCHED) == {"text-pretrain", "mixed-cooldown", "finetune", "evaluate"}
    for stage, st in spec["stages"].items():
        assert st["cmd"] == f"python -m pipeline {stage}"
        if stage in launched:
            assert "train" in st["params"] or "train.nproc" in st["params"]


def _calls(text: str) -> list[str]:
    """The `name(` of every call written in a module's text."""
    return [m + "(" for m in re.findall(r"([A-Za-z_][A-Za-z_0-9]*)\(", text)]


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_cover_the_code_and_data_each_stage_uses(stage):
    assert missing_deps(stage, dvc_spec()) == []


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_code_dep_is_code_the_stage_runs(stage):
    """No stale code deps (a module moved or no longer imported): each re-runs the stage for nothing."""
    deps = dvc_spec()["stages"][stage]["deps"]
    assert [d for d in deps if d.endswith(".py") and Path(d) not in stage_files(stage)] == []


def test_the_closure_finds_the_shared_plumbing_and_lazy_imports():
    files = stage_files("text-pretrain")
    for f in ("vlm/config.py", "vlm/io.py", "pipeline/paths.py", "pipeline/__main__.py", "vlm/model/lm.py",
              "vlm/data/batches.py"):
        assert Path(f) in files
    assert Path("vlm/model/lm.py") in closure("pipeline.check_params")  # imported inside size_line()
    assert Path("vlm/evaluation/scoring.py") not in files
    assert products_named(stage_files("evaluate")) >= {paths.RAW, paths.BRANCH, paths.FINETUNE, paths.ENCODER}


@pytest.mark.parametrize("stage", ["stream-shard", "mixed-cooldown", "evaluate"])
def test_removing_a_dep_is_caught(stage):
    """On a copy of dvc.yaml: drop one code dep and one data dep of the stage; both are reported."""
    spec = copy.deepcopy(dvc_spec())
    deps = spec["stages"][stage]["deps"]
    code = next(d for d in deps if d.endswith(".py") and d != f"{STAGES[stage].replace('.', '/')}.py")
    data = next(d for d in deps if d.startswith("data/"))
    deps.remove(code)
    deps.remove(data)
    missing = missing_deps(stage, spec)
    assert data in missing and code in missing


def test_a_new_import_must_be_declared(monkeypatch):
    """A module the stage starts importing tomorrow is reported until dvc.yaml lists it."""
    real = stage_files
    extra = Path("vlm/evaluation/metrics.py")
    monkeypatch.setattr(sys.modules[__name__], "stage_files", lambda stage: real(stage) | {extra})
    assert missing_deps("branch-at-fraction", dvc_spec()) == [str(extra)]
