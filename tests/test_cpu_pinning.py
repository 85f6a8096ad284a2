"""The same weights on the AVX2 CPUs of one vendor (the `cpu` params, applied by `python -m pipeline`).

Other machines cannot be tried here, so the environment stands in for them: the variables each
library reads to choose its kernels (ATen's capability level, MKL's code path, oneDNN's instruction
set) and its threads are set as another CPU would have them chosen (no vector kernels, MKL's
compatible path, one core). Pinned, the stages must give this machine's weights bit for bit; with
`cpu.kernels: native` and `cpu.threads: 0` the same stand-in must change them, or it proves nothing.
The other vendor's CPU no variable stands in for; qemu-user's emulated CPUs do, for single operations
(the slow test at the end).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
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
print('aten', torch.backends.cpu.get_cpu_capability(), 'nnpack', torch._C._get_nnpack_enabled())
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
    assert f"aten AVX2 nnpack {onednn}" in out  # compatible: NNPACK off with oneDNN, avx2 leaves both on


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


# Single operations on a CPU that qemu-user emulates (`-cpu MODEL`: its vendor, features and caches as
# CPUID reports them), digested one by one: MKL's square root and exponentials (VML), a matrix product,
# the patch convolution at a batch of 16 (where torch would pick NNPACK) and attention, with gradients.
OPERATIONS = """
import hashlib, json, sys, torch
from pipeline.__main__ import pin_torch
from vlm.config import CpuConfig
pin_torch(CpuConfig(threads=2, kernels=sys.argv[1]))
F, g = torch.nn.functional, torch.Generator().manual_seed(0)
x, img = torch.randn(256, 256, generator=g), torch.randn(16, 3, 48, 48, generator=g)
w = torch.randn(96, 3, 16, 16, generator=g, requires_grad=True)
q = torch.randn(2, 4, 64, 32, generator=g, requires_grad=True)
out = {"matmul": x @ x, "sqrt": (x.abs() + 0.1).sqrt(), "exp": x.exp(), "log": (x.abs() + 0.1).log(),
       "erf": torch.erf(x), "gelu": F.gelu(x), "conv": F.conv2d(img, w, stride=16),
       "attention": F.scaled_dot_product_attention(q, q, q, is_causal=True)}
(out["conv"].square().sum() + out["attention"].square().sum()).backward()
out.update({"conv grad": w.grad, "attention grad": q.grad})
digest = lambda t: hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:12]
print(json.dumps({k: digest(t) for k, t in out.items()}))
"""

EMULATED_CPUS = ("Cascadelake-Server-v5", "EPYC-Rome")  # an Intel Xeon and an AMD EPYC (Zen 2)


def emulated(cpu_model: str, kernels: str) -> dict[str, str]:
    env = dict(os.environ)
    pin_cpu(CpuConfig(threads=2, kernels=kernels), env)
    proc = subprocess.run(["qemu-x86_64", "-cpu", cpu_model, sys.executable, "-c", OPERATIONS, kernels],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-user (.ci/run installs it)")
def test_compatible_gives_an_emulated_intel_and_amd_cpu_the_same_results_and_avx2_does_not():
    """What the vendor decides through the libraries' dispatch (MKL's branch per vendor, oneDNN's and
    NNPACK's blocking per cache size) shows under emulation; what the hardware's approximate
    instructions decide does not (qemu computes them its own way, the same for either vendor): README,
    "Reproducibility across machines"."""
    intel, amd = (emulated(cpu, "compatible") for cpu in EMULATED_CPUS)
    assert intel == amd
    intel, amd = (emulated(cpu, "avx2") for cpu in EMULATED_CPUS)
    assert {k for k in intel if intel[k] != amd[k]} >= {"sqrt", "exp"}  # MKL's AVX2 branch is Intel's only
