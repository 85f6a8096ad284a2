"""`python -m pipeline STAGE`: check params.yaml, then run one DVC stage (the `cmd` of dvc.yaml).

The params check imports no torch, so a typo or a bad value fails in well under a second, naming
the key, before any stage module (and its heavy imports) is loaded. A stage that trains or
evaluates in several processes is handed to Composer's launcher first (`launch`).
"""

from __future__ import annotations

import importlib
import os
import sys

from vlm.config import PARAMS_FILE, Config, CpuConfig, ParamError, batch_split_errors, load

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

# The stages that run under Composer's launcher (`composer -n <train.nproc>`, started by `launch`);
# the others run as one process. On several machines the rendezvous variables (README, "Run at
# scale") are exported for the launcher: a one-process stage drops them, else its Composer Trainer
# (train-encoder) would wait for ranks that never come.
LAUNCHED = ("text-pretrain", "mixed-cooldown", "finetune", "evaluate")
RENDEZVOUS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


# `cpu.kernels`: each library's switch to its code path, read when torch loads. ATen picks the widest
# vector kernels the CPU has (AVX-512 ones round differently), MKL its GEMM kernels (CBWR: conditional
# numerical reproducibility), oneDNN (convolutions) its instruction set. MKL's AVX2 branch is one only
# on Intel CPUs (other vendors' run MKL's automatic branch); its COMPATIBLE branch is MKL's path for
# any x86-64 CPU, and MKL's conditions for one result on different systems add threads that MKL and
# OpenMP do not adapt (`*_DYNAMIC`). `compatible` also turns oneDNN and NNPACK off (`pin_torch`).
# Measured (README, "Reproducibility across machines"): one exception is left, MKL's square root
# (VML), which torch.sqrt calls and the optimizer with it; on the COMPATIBLE branch it is not
# correctly rounded and most likely uses the CPU's approximate reciprocal square root.
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
COMPATIBLE_KERNELS = {**AVX2_KERNELS, "MKL_CBWR": "COMPATIBLE", "MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"}
PINNED_KERNELS = {"avx2": AVX2_KERNELS, "compatible": COMPATIBLE_KERNELS}


def pin_cpu(cpu: CpuConfig, env=os.environ) -> None:
    """Fix what chooses the float rounding on a CPU (`cpu` params), before torch is imported."""
    if cpu.kernels in PINNED_KERNELS:
        if has_avx2():
            env.update(PINNED_KERNELS[cpu.kernels])
        else:
            print(f"cpu.kernels is {cpu.kernels} but this CPU has no AVX2: torch uses its own kernels here, so "
                  "weights differ from those of an AVX2 machine (README, \"Reproducibility\")", file=sys.stderr)
    if cpu.threads:  # shared by the processes `composer -n N` starts on this machine
        per_process = max(1, cpu.threads // int(env.get("LOCAL_WORLD_SIZE") or 1))
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(per_process)


def pin_torch(cpu: CpuConfig) -> None:
    """What no variable sets, once torch has loaded: `compatible` turns oneDNN and NNPACK off, so that
    convolutions run as MKL GEMMs and GELU as ATen's AVX2 kernel. Neither library has a reproducibility
    mode: oneDNN's JIT kernels choose their blocking (so their order of summing) from the size of the
    CPU's L2 cache, and NNPACK, which torch picks for a convolution's forward pass (kernels up to 16 px,
    batches of 16 or more) once oneDNN is off, chooses its own kernels and blocking from the CPU it finds."""
    if cpu.kernels == "compatible":
        import torch

        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)


def has_avx2() -> bool:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):  # not Linux: no way to ask without torch; assume not
        return False
    return " avx2 " in f"{flags.rstrip()} "


def processes(nproc: int | str) -> int:
    """`train.nproc` as a number: "auto" is one process per GPU of this machine, one without GPUs."""
    if nproc != "auto":
        return int(nproc)
    import torch  # only here: the params check before it stays free of torch

    return torch.cuda.device_count() or 1


def launch(stage: str, cfg: Config) -> int:
    """Start `stage` in `train.nproc` processes on this machine under Composer's launcher (which
    reads the rendezvous of several machines from the environment); it runs this module again in
    each process, where LOCAL_RANK is set."""
    n = processes(cfg.train.nproc)
    errors = batch_split_errors(cfg, n)
    if errors:
        found = f" (train.nproc auto: {n} processes on this machine)" if cfg.train.nproc == "auto" else ""
        print(f"{stage}: bad params{found}, nothing was run:\n" + "\n".join(f"{PARAMS_FILE}: {e}" for e in errors),
              file=sys.stderr)
        return 2
    args = ["-n", str(n), "-m", "pipeline", stage]
    print(f"{stage}: composer {' '.join(args)}" + (" (train.nproc: auto)" if cfg.train.nproc == "auto" else ""),
          flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "composer.cli.launcher", *args])  # this Python's Composer


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in STAGES:
        print(f"usage: python -m pipeline STAGE, STAGE one of: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    try:
        cfg = load()
    except ParamError as e:
        print(f"{argv[0]}: bad params, nothing was run:\n{e}", file=sys.stderr)
        return 2
    if argv[0] in LAUNCHED and "LOCAL_RANK" not in os.environ:
        return launch(argv[0], cfg)
    if argv[0] not in LAUNCHED:
        for key in RENDEZVOUS:
            os.environ.pop(key, None)
    pin_cpu(cfg.cpu)
    pin_torch(cfg.cpu)
    importlib.import_module(STAGES[argv[0]]).run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
