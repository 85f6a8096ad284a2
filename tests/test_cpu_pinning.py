"""The same weights on the AVX2 CPUs of one vendor (the `cpu` params, applied by `python -m pipeline`).

Other machines cannot be tried here, so the environment stands in for them: the variables each
library reads to choose its kernels (ATen's capability level, MKL's code path, oneDNN's instruction
set) and its threads are set as another CPU would have them chosen (no vector kernels, MKL's
compatible path, one core). Pinned, the stages must give this machine's weights bit for bit; with
`cpu.kernels: native` and `cpu.threads: 0` the same stand-in must change them, or it proves nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dvcrepo import make_repo, run, set_params

from pipeline.__main__ import has_avx2, pin_cpu
from vlm.config import CpuConfig

pytestmark = pytest.mark.skipif(not has_avx2(), reason="needs an AVX2 CPU")

ANOTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STAGES = ("train-encoder", "text-pretrain")  # a convolution (oneDNN) and the LM (ATen, MKL)


def weights(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in ("data/encoder", "data/pretrain") for p in sorted((repo / folder).rglob("*"))
            if p.is_file()}


def train_again(repo: Path, env: dict) -> dict[str, str]:
    for stage in STAGES:
        cmd = ["composer", "-n", "1", "-m", "pipeline", stage] if stage == "text-pretrain" else \
            ["python", "-m", "pipeline", stage]
        run(repo, *cmd, env=env)
    return weights(repo)


# A matrix product, a convolution and a GELU in a fresh process, with MKL and oneDNN saying what ran
# (their verbose logs): MKL's branch and whether it adapts its threads (Dyn), and oneDNN's primitives.
PRODUCT = """
import sys, torch
from pipeline.__main__ import pin_torch
from vlm.config import CpuConfig
pin_torch(CpuConfig(threads=1, kernels=sys.argv[1]))
a = torch.randn(64, 64); a @ a
torch.nn.functional.gelu(torch.nn.functional.conv2d(torch.randn(2, 3, 32, 32), torch.randn(8, 3, 16, 16), stride=16))
print('aten', torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.parametrize("kernels, mkl, dynamic, onednn", [("avx2", "AVX2", "1", True),
                                                           ("compatible", "COMPATIBLE", "0", False)])
def test_each_pinned_kernels_value_runs_its_mkl_branch_aten_level_and_onednn_or_not(kernels, mkl, dynamic, onednn):
    env = {**os.environ, "MKL_VERBOSE": "1", "ONEDNN_VERBOSE": "1", "ATEN_CPU_CAPABILITY": "default",
           "MKL_CBWR": "AUTO"}
    pin_cpu(CpuConfig(threads=1, kernels=kernels), env)
    out = subprocess.run([sys.executable, "-c", PRODUCT, kernels], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert set(re.findall(r"CNR:(\w+)", out)) == {mkl}, out
    assert set(re.findall(r"CNR:\w+ Dyn:(\d)", out)) == {dynamic}, out
    onednn_ran = re.findall(r"onednn_verbose.*?,exec,cpu,(\w+)", out)  # the primitives it ran
    assert ({"convolution", "eltwise"} <= set(onednn_ran)) if onednn else onednn_ran == [], out
    assert "aten AVX2" in out


@pytest.mark.slow
def test_pinned_kernels_and_threads_give_the_same_weights_as_on_another_cpu(tmp_path):
    repo = make_repo(tmp_path / "repo")
    run(repo, "dvc", "repro", *STAGES)
    here = weights(repo)
    assert len(here) >= 4

    assert train_again(repo, ANOTHER_CPU) == here  # pinned: the stand-in changes nothing

    set_params(repo, **{"cpu.kernels": "native", "cpu.threads": 0})
    unpinned = train_again(repo, ANOTHER_CPU)
    assert unpinned.keys() == here.keys()
    assert unpinned != here  # the stand-in does change the rounding when nothing pins it
