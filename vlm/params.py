"""Load params.yaml and check every value before a stage does any work.

Each check names the param (dotted key), the offending value and what was expected, so a bad
`dvc exp run -S key=value` fails in a second instead of after minutes of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
PRESETS = ("tiny", "79m", "1.4b")


class ParamError(ValueError):
    """A value in params.yaml is missing, of the wrong type or out of range."""


def get(params: dict, key: str) -> Any:
    """`get(p, "pretrain.lr")` -> p["pretrain"]["lr"], with a clear error when it is missing."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamError(f"{PARAMS_FILE}: missing param `{key}`")
        node = node[part]
    return node


def _number(params: dict, key: str, kind: type, lo: float | None, hi: float | None, lo_open: bool) -> Any:
    value = get(params, key)
    ok_type = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if isinstance(value, bool) or not ok_type:
        raise ParamError(f"{PARAMS_FILE}: `{key}` must be {kind.__name__}, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ParamError(f"{PARAMS_FILE}: `{key}` must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ParamError(f"{PARAMS_FILE}: `{key}` must be <= {hi}, got {value!r}")
    return value


def integer(params: dict, key: str, lo: int | None = None, hi: int | None = None) -> int:
    return _number(params, key, int, lo, hi, lo_open=False)


def positive_int(params: dict, key: str) -> int:
    return integer(params, key, lo=1)


def real(params: dict, key: str, lo: float | None = None, hi: float | None = None, lo_open=False) -> float:
    return float(_number(params, key, float, lo, hi, lo_open))


def fraction(params: dict, key: str) -> float:
    return real(params, key, 0.0, 1.0)


def choice(params: dict, key: str, options: tuple) -> Any:
    value = get(params, key)
    if value not in options:
        raise ParamError(f"{PARAMS_FILE}: `{key}` must be one of {list(options)}, got {value!r}")
    return value


def optional_path(params: dict, key: str, must_exist: bool = True) -> Path | None:
    value = get(params, key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ParamError(f"{PARAMS_FILE}: `{key}` must be a path or null, got {value!r}")
    path = Path(value)
    if must_exist and not path.exists():
        raise ParamError(f"{PARAMS_FILE}: `{key}` names {value!r}, which does not exist")
    return path


def load(path: str | Path = PARAMS_FILE) -> dict:
    """Read params.yaml (a mapping) and check the values every stage relies on."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: params file not found (run from the repository root)")
    with path.open() as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise ParamError(f"{path}: expected a mapping at the top level, got {type(params).__name__}")
    integer(params, "seed", lo=0)
    return params
