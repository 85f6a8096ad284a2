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

from vlm.training.callbacks import CurvesCSV


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
    curves: Path,
    seed: int,
    run_name: str,
    weight_decay: float = 0.0,
    callbacks: Sequence[Callback] = (),
    eval_data: DataSpec | None = None,
    eval_interval: Callable | int = 1,
    save_folder: Path | None = None,
    save_interval: Callable | str = "1ep",
) -> Trainer:
    """A Trainer with DecoupledAdamW, LR + speed monitors and the CSV curve logger."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = DecoupledAdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    device, precision = device_and_precision()
    evaluators = None
    if eval_data is not None:
        evaluators = Evaluator(label="val", dataloader=eval_data, metric_names=["LanguageCrossEntropy"])
    return Trainer(
        model=model,
        train_dataloader=train,
        max_duration=duration,
        optimizers=optimizer,
        schedulers=scheduler,
        step_schedulers_every_batch=True,
        eval_dataloader=evaluators,
        eval_interval=eval_interval,
        callbacks=[LRMonitor(), SpeedMonitor(window_size=10), *callbacks],
        loggers=[CurvesCSV(curves)],
        run_name=run_name,
        progress_bar=True,
        save_folder=str(save_folder) if save_folder else None,
        save_filename="ba{batch}.pt",
        save_latest_filename=None,
        save_interval=save_interval,
        save_overwrite=True,
        device=device,
        precision=precision,
        seed=seed,
        python_log_level="error",
    )


def curves_of(trainer: Trainer) -> CurvesCSV:
    """The trainer's CSV curve logger (its rows hold every logged step)."""
    return next(d for d in trainer.logger.destinations if isinstance(d, CurvesCSV))
