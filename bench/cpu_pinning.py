"""What the `cpu` params cost in speed: text-pretrain's model at the default's shape, trained a few
steps in a fresh process with the committed `cpu` params applied (pinned kernels and threads), with
`kernels: native, threads: 0` (the best each library finds, every core) and with `kernels:
compatible` (MKL's branch for CPUs of every vendor, README "Reproducibility across machines"). On a CPU whose best is
AVX2 with as many cores as `cpu.threads` pinned and native are the same code and the same weights; on a bigger
or AVX-512 machine the ratio is the price of reproducing dvc.lock there."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.__main__ import pin_cpu
from vlm.config import Config, CpuConfig

ROOT = Path(__file__).resolve().parents[1]

# Runs in the child, after the environment has chosen the kernels and threads.
CHILD = """
import hashlib, json, sys, time
import torch
from pipeline.__main__ import pin_torch
from vlm.config import CpuConfig
from vlm.model.lm import LM, lm_config
pin_torch(CpuConfig(**json.loads(sys.argv[1])))  # as `python -m pipeline` does once torch has loaded
vocab, seq_len, batch, warmup, steps = map(int, sys.argv[2:])
torch.manual_seed(0)
model = LM(lm_config("tiny", vocab, seq_len))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randint(0, vocab, (batch, seq_len + 1), generator=torch.Generator().manual_seed(1))
def step():
    logits = model(x[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(warmup):
    step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
seconds = time.perf_counter() - t0
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
print(json.dumps({"tokens_per_sec": steps * batch * seq_len / seconds, "weights": digest[:16],
                  "threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def _child(env: dict, cpu: CpuConfig, vocab: int, seq_len: int, batch: int, warmup: int, steps: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(dataclasses.asdict(cpu)),
                           *map(str, (vocab, seq_len, batch, warmup, steps))],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(cfg: Config, vocab: int, seq_len: int, batch: int, warmup: int = 3, steps: int = 30) -> dict:
    runs = {}
    for name, cpu in (("pinned", cfg.cpu), ("native", dataclasses.replace(cfg.cpu, kernels="native", threads=0)),
                      ("compatible", dataclasses.replace(cfg.cpu, kernels="compatible"))):
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        pin_cpu(cpu, env)
        runs[name] = {"cpu": dataclasses.asdict(cpu), **_child(env, cpu, vocab, seq_len, batch, warmup, steps)}
    return {**runs, "pinned_over_native": runs["pinned"]["tokens_per_sec"] / runs["native"]["tokens_per_sec"],
            "same_weights": runs["pinned"]["weights"] == runs["native"]["weights"],
            "compatible_over_pinned": runs["compatible"]["tokens_per_sec"] / runs["pinned"]["tokens_per_sec"]}
