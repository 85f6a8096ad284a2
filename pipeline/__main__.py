"""`python -m pipeline STAGE`: check params.yaml, then run one DVC stage (the `cmd` of dvc.yaml).

The params check imports no torch, so a typo or a bad value fails in well under a second, naming
the key, before any stage module (and its heavy imports) is loaded.
"""

from __future__ import annotations

import importlib
import os
import sys

from vlm.config import CpuConfig, ParamError, load

# DVC stage name -> the module whose `run(cfg)` does its work
STAGES = {
    "prepare": "pipeline.prepare",
    "tokenize": "pipeline.tokenize_sources",
    "stream-shard": "pipeline.stream_shard",
    "train-encoder": "pipeline.train_encoder",
    "encode-images": "pipeline.encode_images",
    "text-pretrain": "pipeline.text_pretrain",
    "branch-at-fraction": "pipeline.branch",
    "mixed-cooldown": "pipeline.cooldown",
    "finetune": "pipeline.finetune",
    "evaluate": "pipeline.evaluate",
}

# The stages dvc.yaml starts under Composer's launcher (`composer -n ${train.nproc}`); the others run
# as one process. On several machines the rendezvous variables (README, "Run at scale") are exported
# for the launcher: a one-process stage drops them, else its Composer Trainer (train-encoder) would
# wait for ranks that never come.
LAUNCHED = ("text-pretrain", "mixed-cooldown", "finetune", "evaluate")
RENDEZVOUS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


# `cpu.kernels: avx2`: each library's switch to its AVX2 code path, read when torch loads. ATen picks
# the widest vector kernels the CPU has (AVX-512 ones round differently), MKL its GEMM kernels
# (CBWR: conditional numerical reproducibility), oneDNN (convolutions) its instruction set.
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin_cpu(cpu: CpuConfig, env=os.environ) -> None:
    """Fix what chooses the float rounding on a CPU (`cpu` params), before torch is imported."""
    if cpu.kernels == "avx2":
        if has_avx2():
            env.update(AVX2_KERNELS)
        else:
            print("cpu.kernels is avx2 but this CPU has no AVX2: torch uses its own kernels here, so weights "
                  "differ from those of an AVX2 machine (README, \"Reproducibility\")", file=sys.stderr)
    if cpu.threads:  # shared by the processes `composer -n N` starts on this machine
        per_process = max(1, cpu.threads // int(env.get("LOCAL_WORLD_SIZE") or 1))
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(per_process)


def has_avx2() -> bool:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):  # not Linux: no way to ask without torch; assume not
        return False
    return " avx2 " in f"{flags.rstrip()} "


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in STAGES:
        print(f"usage: python -m pipeline STAGE, STAGE one of: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    try:
        cfg = load()
    except ParamError as e:
        print(f"{argv[0]}: bad params, nothing was run:\n{e}", file=sys.stderr)
        return 2
    if argv[0] not in LAUNCHED:
        for key in RENDEZVOUS:
            os.environ.pop(key, None)
    pin_cpu(cfg.cpu)
    importlib.import_module(STAGES[argv[0]]).run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
