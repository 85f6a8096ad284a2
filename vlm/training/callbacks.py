"""Composer callbacks: training curves to CSV, the realised token mix, and the run's health.

Results and measurements are kept apart (design.md, "Reproducibility contract"): loss, LR and
token shares go to the curve CSV that DVC hashes; wall-clock throughput goes to a timing CSV that
is not a DVC output. Every callback that accumulates carries `state_dict`, which Composer saves in
its checkpoints, so a resumed run writes the same files as an uninterrupted one.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
from composer.core import Callback, State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

from vlm.data.batches import KIND_NAMES, real_tokens
from vlm.faults import crash_point
from vlm.model import store
from vlm.model.lm import num_params
from vlm.training.moments import save_moments

# CSV column -> the name Composer (or TokenShare) logs it under; "loss" is read from the state
CURVE_COLUMNS = {
    "loss": None,
    "lr": "lr-DecoupledAdamW/group0",
    "val_loss": "metrics/val/LanguageCrossEntropy",
    "tokens": "data/tokens",
    "image_token_share": "data/image_token_share",
}
TIMING_COLUMNS = {"tokens_per_sec": "throughput/tokens_per_sec"}


def _write_csv(path: Path, rows: dict[int, dict[str, float]], order: list[str]) -> None:
    columns = [c for c in order if any(c in r for r in rows.values())]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *columns])
        for step in sorted(rows):
            row = rows[step]
            if any(c in row for c in columns):
                writer.writerow([step, *(f"{row[c]:.6g}" if c in row else "" for c in columns)])


class CurvesCSV(LoggerDestination):
    """One row per training step of the metrics above: results to `path`, wall-clock to `timing_path`.

    Row `s` describes batch `s` (1-based): its loss, the LR it was trained with, the tokens seen
    after it and the validation loss measured right after it. (Composer logs the train loss before
    it counts the batch, so the loss is taken from the state at BATCH_END instead.)
    """

    def __init__(self, path: str | Path, timing_path: str | Path | None = None):
        self.path = Path(path)
        self.timing_path = Path(timing_path) if timing_path else None
        self.rows: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step is None:
            return
        row = self.rows.setdefault(int(step), {})
        for column, name in {**CURVE_COLUMNS, **TIMING_COLUMNS}.items():
            if name is not None and name in metrics:
                row[column] = float(metrics[name])

    def batch_end(self, state: State, logger: Logger) -> None:
        # Composer's total, averaged over the processes (the same number as `state.loss` in one process)
        loss = state.total_loss_dict.get("loss/train/total", state.loss)
        self.rows.setdefault(state.timestamp.batch.value, {})["loss"] = float(loss)

    def fit_end(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        _write_csv(self.path, self.rows, list(CURVE_COLUMNS))
        if self.timing_path:
            _write_csv(self.timing_path, self.rows, list(TIMING_COLUMNS))

    def column(self, name: str) -> dict[int, float]:
        """{step: value} of one column."""
        return {s: r[name] for s, r in sorted(self.rows.items()) if name in r}

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = {int(k): dict(v) for k, v in state["rows"].items()}


class TokenShare(Callback):
    """Counts the real (non-pad) training tokens of each sample kind and logs the running shares.

    This is the *realised* image ratio of design.md: image + caption tokens of image-caption
    samples over all training tokens, summed over every process's share of the global batch.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.tokens = {name: 0 for name in KIND_NAMES.values()}

    def after_dataloader(self, state: State, logger: Logger) -> None:
        batch = state.batch
        counts = real_tokens(batch, self.pad_id)
        per_kind = torch.stack([counts[batch["kind"] == kind].sum() for kind in KIND_NAMES])
        dist.all_reduce(per_kind, reduce_operation="SUM")  # a no-op in one process
        for name, n in zip(KIND_NAMES.values(), per_kind.tolist(), strict=True):
            self.tokens[name] += int(n)

    def batch_end(self, state: State, logger: Logger) -> None:
        total = sum(self.tokens.values())
        logger.log_metrics({"data/tokens": total, "data/image_token_share": self.tokens["captions"] / total})

    def shares(self) -> dict[str, float]:
        total = sum(self.tokens.values()) or 1
        return {name: n / total for name, n in self.tokens.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": dict(self.tokens)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens = dict(state["tokens"])


class Health(Callback):
    """Stops the run at the first non-finite loss, before that step is checkpointed; `VLM_CRASH_AT`
    (vlm/faults.py) kills the process after a given step for the crash tests."""

    def __init__(self, stage: str):
        self.stage = stage

    def after_loss(self, state: State, logger: Logger) -> None:
        losses = state.loss.values() if isinstance(state.loss, dict) else [state.loss]
        values = [float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in losses]
        if not all(math.isfinite(v) for v in values):
            raise FloatingPointError(
                f"{self.stage}: the training loss is {values[0] if len(values) == 1 else values} at step "
                f"{state.timestamp.batch.value + 1}; stopped before that step was applied or checkpointed "
                "(lower the learning rate or check the data of this step)"
            )

    def batch_end(self, state: State, logger: Logger) -> None:
        crash_point(f"{self.stage}:step{state.timestamp.batch.value}")


def count_params(module: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"params": num_params(module), "trainable_params": trainable}


class SaveWeightsAt(Callback):
    """Saves `module`'s weights (a `vlm.model.store` folder, safetensors) right after each of `steps`,
    from the first process only (the others hold the same weights, or with FSDP their shards of them);
    with `optimizer`, Adam's moments for those weights beside them (vlm/training/moments.py).

    The text run's branch points: results, unlike Composer's resume checkpoints, so they hold the
    weights (and moments) alone and nothing that differs from run to run.
    """

    def __init__(self, module: torch.nn.Module, steps: set[int], folder: Path, optimizer: bool = False):
        self.module, self.steps, self.folder, self.optimizer = module, steps, Path(folder), optimizer

    def batch_end(self, state: State, logger: Logger) -> None:
        step = state.timestamp.batch.value
        if step in self.steps:
            weights = store.full_weights(self.module)  # every process: FSDP's shards are gathered together
            if dist.get_global_rank() == 0:
                store.save(self.module, self.folder / f"ba{step}", weights=weights)
                if self.optimizer:
                    save_moments(self.module, state.optimizers[0], self.folder / f"ba{step}")
