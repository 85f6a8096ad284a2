"""Shared fixtures: a small synthetic world, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlm.data.world import write_world


def small_world_params(**prepare) -> dict:
    """Params for a world small enough to generate in a fraction of a second."""
    base = {"n_text_docs": 60, "n_creatures": 6, "n_instruct_creatures": 2, "n_images": 40, "n_instruct": 60,
            "text_instruct_share": 0.25, "n_eval": 48, "image_size": 32}
    return {"seed": 7, "prepare": {**base, **prepare}}


@pytest.fixture
def world_params():
    """Factory: `world_params(n_eval=10)` -> small params with some `prepare` values changed."""
    return small_world_params


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/raw of a small world (read-only: tests that change files make their own)."""
    out = tmp_path_factory.mktemp("world") / "raw"
    write_world(small_world_params(), out)
    return out
