"""One place that sets up Composer's Trainer the same way for every training stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from composer import Trainer
from composer.callbacks import LRMonitor, SpeedMonitor
from composer.core import Callback, DataSpec, Evaluator
from composer.optim import DecoupledAdamW
from composer.optim.scheduler import ComposerScheduler
from composer.utils import reproducibility

from vlm.training.callbacks import CurvesCSV, Health
from vlm.training.resume import Resume, check_disk_space, checkpoint_bytes


def device_and_precision() -> tuple[str, str]:
    """bf16 autocast on a GPU, plain fp32 on the CPU (the embedded default)."""
    return ("gpu", "amp_bf16") if torch.cuda.is_available() else ("cpu", "fp32")


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
) -> Trainer:
    """A Trainer with DecoupledAdamW, LR + speed monitors, the CSV curve logger and the health check.

    With `resume` (and a positive interval) it saves a checkpoint every `resume.interval` batches in
    `resume.folder` and autoresumes from the latest one there: model, optimizer, scheduler, the
    Streaming loader's position and every callback's state.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = DecoupledAdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    device, precision = device_and_precision()
    evaluators = None
    if eval_data is not None:
        evaluators = Evaluator(label="val", dataloader=eval_data, metric_names=["LanguageCrossEntropy"])
    saving = resume is not None and resume.interval > 0
    if saving:
        check_disk_space(resume.folder, checkpoint_bytes(model), f"the {stage} resume checkpoint")
    trainer = Trainer(
        model=model,
        train_dataloader=train,
        max_duration=duration,
        optimizers=optimizer,
        schedulers=scheduler,
        step_schedulers_every_batch=True,
        eval_dataloader=evaluators,
        eval_interval=eval_interval,
        callbacks=[LRMonitor(), SpeedMonitor(window_size=10), Health(stage), *callbacks],
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
    done = trainer.state.timestamp.batch.value
    if done:
        print(f"{stage}: resumed from the checkpoint at step {done} in {resume.folder}", flush=True)
    return trainer


def curves_of(trainer: Trainer) -> CurvesCSV:
    """The trainer's CSV curve logger (its rows hold every logged step)."""
    return next(d for d in trainer.logger.destinations if isinstance(d, CurvesCSV))
