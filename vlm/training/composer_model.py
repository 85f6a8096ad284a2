"""The thin adapter that makes the plain-PyTorch LM / VLM a ComposerModel."""

from __future__ import annotations

import torch
from composer.metrics import LanguageCrossEntropy
from composer.models import ComposerModel
from torch import nn

from vlm.model.lm import masked_lm_loss
from vlm.model.vision import clip_siglip_loss


class ComposerLM(ComposerModel):
    """Wraps an `LM` or `VLM`; batches come from `vlm.data.batches.Collator`.

    Loss and the validation metric both count only the tokens the batch's `loss_mask` marks.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.val_metrics = {"LanguageCrossEntropy": LanguageCrossEntropy()}

    def forward(self, batch: dict) -> torch.Tensor:
        if batch.get("images") is not None:
            return self.module(batch["input_ids"], images=batch["images"])
        return self.module(batch["input_ids"])

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        return masked_lm_loss(outputs, batch["input_ids"], batch["loss_mask"])

    def eval_forward(self, batch: dict, outputs: torch.Tensor | None = None) -> torch.Tensor:
        return outputs if outputs is not None else self.forward(batch)

    def get_metrics(self, is_train: bool = False) -> dict:
        return {} if is_train else self.val_metrics

    def update_metric(self, batch: dict, outputs: torch.Tensor, metric) -> None:
        targets = batch["input_ids"][:, 1:].masked_fill(batch["loss_mask"][:, 1:] == 0, -100)
        metric.update(outputs[:, :-1].contiguous(), targets.contiguous())


class ComposerCLIP(ComposerModel):
    """Wraps an open_clip CLIP for SigLIP-loss training; `forward` already returns the loss."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.module = clip

    def forward(self, batch: dict) -> torch.Tensor:
        return clip_siglip_loss(self.module, batch["images"], batch["text"])

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        return outputs
