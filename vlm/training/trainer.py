"""One place that sets up Composer's Trainer the same way for every training stage."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from composer import Trainer
from composer.callbacks import LRMonitor, SpeedMonitor
from composer.core import Algorithm, Callback, DataSpec, Evaluator
from composer.optim import DecoupledAdamW
from composer.optim.scheduler import ComposerScheduler
from composer.utils import dist, reproducibility
from composer.utils.parallelism import FSDP2Config

from vlm.training.callbacks import CurvesCSV, Health
from vlm.training.mirror import RemoteMirror
from vlm.training.resume import Resume, check_disk_space, checkpoint_bytes


def device_and_precision() -> tuple[str, str]:
    """bf16 autocast on a GPU, plain fp32 on the CPU (the embedded default)."""
    return ("gpu", "amp_bf16") if torch.cuda.is_available() else ("cpu", "fp32")


class FindUnusedParameters(Algorithm):
    """Changes nothing but has Composer wrap the model in DDP with `find_unused_parameters`: with
    several processes, one whose share of a batch holds no image leaves the projector (and an
    unfrozen encoder) without gradients, which plain DDP cannot synchronise."""

    @property
    def find_unused_parameters(self) -> bool:
        return True

    def match(self, event, state) -> bool:
        return False

    def apply(self, event, state, logger) -> None:
        return None


def join_processes() -> None:
    """Join the other processes of `composer -n N` (alone: a group of one) before any dataset is
    built. Streaming would otherwise start and stop a process group of its own, racing Composer's.

    Composer's launcher leaves each process torch's default of one thread per core; N processes on
    one machine then oversubscribe it N times, so each gets its share of the cores instead (unless
    OMP_NUM_THREADS says otherwise).
    """
    local = dist.get_local_world_size()
    if local > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    dist.initialize_dist(device_and_precision()[0])


def is_main() -> bool:
    """True on the process that writes the stage's outputs (global rank 0 of `composer -n N`)."""
    return dist.get_global_rank() == 0


def per_rank(batch_size: int, key: str) -> int:
    """Each process's share of the global batch `batch_size` (the param `key`)."""
    world = dist.get_world_size()
    if batch_size % world:
        raise ValueError(
            f"`{key}` {batch_size} is not divisible by the {world} training processes (WORLD_SIZE): each takes "
            f"batch / processes samples; choose a batch size divisible by train.nproc x nodes"
        )
    return batch_size // world


def seed_everything(seed: int) -> None:
    """Seed torch/numpy/random before a model is built, so its init depends on `seed` only."""
    reproducibility.seed_all(seed)


def make_trainer(
    model,
    train: DataSpec,
    duration: str,
    lr: float,
    scheduler: ComposerScheduler,
    stage: str,
    seed: int,
    curves: Path,
    timings: Path | None = None,
    resume: Resume | None = None,
    weight_decay: float = 0.0,
    callbacks: Sequence[Callback] = (),
    eval_data: DataSpec | None = None,
    eval_interval: Callable | int = 1,
    loss_per_token: bool = True,
    microbatch_size: int = 0,
    fsdp: bool = False,
) -> Trainer:
    """A Trainer with DecoupledAdamW, LR + speed monitors, the CSV curve logger and the health check.

    With `resume` (and a positive interval) it saves a checkpoint every `resume.interval` batches in
    `resume.folder` and autoresumes from the latest one there: model, optimizer, scheduler, the
    Streaming loader's position and every callback's state. With `resume.remote` that folder is
    first pulled from S3 and pushed back after every checkpoint (vlm/training/mirror.py).

    `loss_per_token`: the loss is a mean over the batch's loss tokens (`loader`'s DataSpec counts
    them), so Composer weights each process's (and microbatch's) loss by its share of those tokens:
    N processes then follow the same gradient as one. Off for a loss that is no per-token mean.
    `microbatch_size` > 0: each process runs its batch in chunks of that many samples and
    accumulates their gradients (Composer's `device_train_microbatch_size`): the same step, less memory.
    `fsdp`: weights, gradients and optimizer state sharded over the processes (Composer's FSDP2, in the
    units the model's `fsdp_wrap_fn` names). Checkpoints still hold the whole state (`state_dict_type`
    full), so resuming works as without it; save the weights through `store.full_weights`.
    """
    if fsdp and hasattr(model.module, "every_step_images"):
        model.module.every_step_images = True  # a VLM: see VLM.every_step_images
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = DecoupledAdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    device, precision = device_and_precision()
    evaluators = None
    if eval_data is not None:
        evaluators = Evaluator(label="val", dataloader=eval_data, metric_names=["LanguageCrossEntropy"])
    saving = resume is not None and resume.interval > 0
    if saving:
        check_disk_space(resume.folder, checkpoint_bytes(model), f"the {stage} resume checkpoint")
    mirror = RemoteMirror(resume.folder, resume.remote) if saving and resume.remote else None
    if mirror is not None:
        if dist.get_local_rank() == 0:  # every machine needs the checkpoint to resume
            mirror.pull()
        dist.barrier()
    trainer = Trainer(
        model=model,
        train_dataloader=train,
        max_duration=duration,
        optimizers=optimizer,
        schedulers=scheduler,
        step_schedulers_every_batch=True,
        accumulate_train_batch_on_tokens=loss_per_token,
        device_train_microbatch_size=microbatch_size or None,
        eval_dataloader=evaluators,
        eval_interval=eval_interval,
        callbacks=[LRMonitor(), SpeedMonitor(window_size=10), Health(stage), *callbacks],
        algorithms=[FindUnusedParameters()] if dist.get_world_size() > 1 and not fsdp else [],
        parallelism_config={"fsdp": FSDP2Config(state_dict_type="full")} if fsdp else None,
        loggers=[CurvesCSV(curves, timings)],
        run_name=resume.run_name if resume else stage,
        progress_bar=True,
        save_folder=str(resume.folder) if saving else None,
        save_filename="ba{batch}.pt",
        save_interval=f"{resume.interval}ba" if saving else "1ep",
        save_num_checkpoints_to_keep=1,
        autoresume=saving,
        device=device,
        precision=precision,
        seed=seed,
        python_log_level="error",
    )
    if mirror is not None:
        trainer.state.callbacks.append(mirror)  # after Composer's CheckpointSaver: pushes what it saved
    world = dist.get_world_size()
    if world > 1 and is_main():
        print(f"{stage}: {world} processes ({dist.get_local_world_size()} on this machine), "
              f"{train.dataloader.batch_size} samples each per step"
              + ("; weights, gradients and optimizer state sharded over them (FSDP2)" if fsdp else ""), flush=True)
    if microbatch_size and is_main():
        print(f"{stage}: each process runs its share of a batch in microbatches of "
              f"{trainer.state.device_train_microbatch_size} samples", flush=True)
    done = trainer.state.timestamp.batch.value
    if done:
        print(f"{stage}: resumed from the checkpoint at step {done} in {resume.remote or resume.folder}", flush=True)
    return trainer


def curves_of(trainer: Trainer) -> CurvesCSV:
    """The trainer's CSV curve logger (its rows hold every logged step)."""
    return next(d for d in trainer.logger.destinations if isinstance(d, CurvesCSV))
