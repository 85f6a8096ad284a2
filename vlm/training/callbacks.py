"""Logging: training curves to CSV files that dvc.yaml declares as plots, and the realised token mix."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from composer.core import Callback, State
from composer.loggers import Logger, LoggerDestination

from vlm.model.lm import num_params
from vlm.training.data import KIND_NAMES, real_tokens

# CSV column -> the name Composer (or TokenShare) logs it under
CURVE_COLUMNS = {
    "loss": "loss/train/total",
    "lr": "lr-DecoupledAdamW/group0",
    "tokens_per_sec": "throughput/tokens_per_sec",
    "val_loss": "metrics/val/LanguageCrossEntropy",
    "tokens": "data/tokens",
    "image_token_share": "data/image_token_share",
}


class CurvesCSV(LoggerDestination):
    """One row per training step: the metrics above that were logged at that step."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step is None:
            return
        row = self.rows.setdefault(int(step), {})
        for column, name in CURVE_COLUMNS.items():
            if name in metrics:
                row[column] = float(metrics[name])

    def fit_end(self, state: State, logger: Logger) -> None:
        columns = [c for c in CURVE_COLUMNS if any(c in r for r in self.rows.values())]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", *columns])
            for step in sorted(self.rows):
                row = self.rows[step]
                writer.writerow([step, *(f"{row[c]:.6g}" if c in row else "" for c in columns)])


class TokenShare(Callback):
    """Counts the real (non-pad) training tokens of each sample kind and logs the running shares.

    This is the *realised* image ratio of design.md: image + caption tokens of image-caption
    samples over all training tokens.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.tokens = {name: 0 for name in KIND_NAMES.values()}

    def after_dataloader(self, state: State, logger: Logger) -> None:
        batch = state.batch
        counts = real_tokens(batch, self.pad_id)
        for kind, name in KIND_NAMES.items():
            self.tokens[name] += int(counts[batch["kind"] == kind].sum())
        total = sum(self.tokens.values())
        logger.log_metrics({"data/tokens": total, "data/image_token_share": self.tokens["captions"] / total})

    def shares(self) -> dict[str, float]:
        total = sum(self.tokens.values()) or 1
        return {name: n / total for name, n in self.tokens.items()}


def count_params(module: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"params": num_params(module), "trainable_params": trainable}
