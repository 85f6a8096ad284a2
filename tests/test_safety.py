"""Safe loading, guarded for all code to come: no pickle-based loads, no unsafe YAML, no tar
extraction that could write outside its folder, no pickled columns in the shards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = sorted(p for d in ("vlm", "pipeline", "tests") for p in (ROOT / d).rglob("*.py"))


def calls(path: Path):
    """(dotted name, call node) of every call in a file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            yield name, node


def keyword(node: ast.Call, name: str):
    return next((ast.unparse(k.value) for k in node.keywords if k.arg == name), None)


@pytest.mark.parametrize("path", CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_deserialisation(path):
    for name, node in calls(path):
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if name.endswith("torch.load"):
            assert keyword(node, "weights_only") == "True", f"{where}: torch.load needs weights_only=True"
        assert not name.startswith(("pickle.", "dill.", "cloudpickle.")), f"{where}: {name}"
        if name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
            pytest.fail(f"{where}: {name}; use yaml.safe_load")
        if name.endswith(("extractall", ".extract")):
            assert keyword(node, "filter") == "'data'", f"{where}: tar extraction needs filter='data'"


def test_the_shards_hold_no_pickled_columns():
    """Every shard is written with these columns (vlm/data/shards.py): arrays and raw bytes only."""
    from vlm.data.shards import COLUMNS

    assert set(COLUMNS.values()) <= {"ndarray:int32", "ndarray:uint8", "bytes"}
