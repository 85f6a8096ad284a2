"""Shared fixtures: a small synthetic world, generated once per test session."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from dvcrepo import make_repo, run

from vlm.config import FilesConfig, PrepareConfig
from vlm.data.world import write_world
from vlm.training.shared_memory import remove_unused_filelocks

SEED = 7
NO_FILES = FilesConfig(text=[], captions=[], instruct=[], vqa=[], pope=[], text_mc=[])
SMALL_WORLD = PrepareConfig(source="synthetic", max_bad_fraction=0.01, files=NO_FILES,
                            n_text_docs=60, n_creatures=6, n_instruct_creatures=2, n_images=40, n_instruct=60,
                            text_instruct_share=0.25, n_eval=48, image_size=48)


@pytest.fixture(autouse=True)
def _unused_streaming_filelocks_removed():
    """Before each test, Streaming's unused file locks go (`remove_unused_filelocks`: a millisecond)."""
    remove_unused_filelocks()


def small_world_params(**prepare) -> PrepareConfig:
    """A world small enough to generate in a fraction of a second, with some values changed."""
    return replace(SMALL_WORLD, **prepare)


@pytest.fixture
def world_params():
    """Factory: `world_params(n_eval=10)` -> the small PrepareConfig with some values changed."""
    return small_world_params


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/raw of a small world (read-only: tests that change files make their own)."""
    out = tmp_path_factory.mktemp("world") / "raw"
    write_world(small_world_params(), SEED, out)
    return out


@pytest.fixture(scope="session")
def tiny_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny repository after one whole `dvc repro` (about a minute on 2 cores), made once per
    test run, the widest scope pytest has. Never changed: tests take `tiny`, a copy of their own.

    Its dvc.lock and pretrain metrics are kept beside it (`first-dvc.lock`,
    `first-metrics-pretrain.json`) for the tests that compare a re-run with the first run.
    """
    repo = make_repo(tmp_path_factory.mktemp("tiny") / "repo")
    run(repo, "dvc", "repro")
    shutil.copy2(repo / "dvc.lock", repo.parent / "first-dvc.lock")
    shutil.copy2(repo / "metrics/pretrain.json", repo.parent / "first-metrics-pretrain.json")
    return repo


@pytest.fixture
def tiny(tiny_baseline: Path, tmp_path: Path) -> Path:
    """This test's own copy of the tiny baseline: git, DVC cache, products and all (about 60 MB, copied
    in a third of a second), so a test that runs experiments or changes params changes only its copy."""
    shutil.copytree(tiny_baseline.parent, tmp_path / "tiny", symlinks=True)
    return tmp_path / "tiny" / tiny_baseline.name
