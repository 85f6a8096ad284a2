"""The container tier: containers/test-image builds the CPU image from containers/Containerfile (a
Debian base bootstrapped on the spot: no registry is reachable), runs the tiny pipeline and part of
the suite inside it through containers/run, and checks the products from outside. Needs root (it
installs podman, debootstrap and runc when missing) and minutes; `make test-all` and CI run it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.container


def test_the_image_builds_and_runs_the_tiny_pipeline_and_tests():
    proc = subprocess.run(["bash", str(ROOT / "containers/test-image")], cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "passed (metrics/eval.json written, dvc status clean outside" in proc.stdout
