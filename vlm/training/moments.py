"""Adam's state at a branch point, saved by the text run and carried into the cooldown.

The paper's cooldown continues the text run, optimizer included. Our text run saves each branch
point's weights (`SaveWeightsAt`); with `pretrain.save_optimizer` it saves beside them, per LM
parameter, Adam's two moments and its step count (`optimizer.safetensors`, keyed by the LM's own
parameter names). With `branch.optimizer: carry` the cooldown puts them back into its optimizer
for the LM's parameters before its first step; the projector (and a trained encoder) start fresh,
as they have no history. Not with FSDP (sharded moments): the params check refuses that.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FILE = "optimizer.safetensors"
MOMENTS = ("exp_avg", "exp_avg_sq", "step")  # DecoupledAdamW's (and torch AdamW's) per-parameter state


def save_moments(module: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> int:
    """Write `module`'s parameters' Adam state to `folder`/optimizer.safetensors; returns the
    number of parameters that had one (those that received gradients)."""
    tensors = {}
    for name, p in module.named_parameters():
        state = optimizer.state.get(p, {})
        if all(k in state for k in MOMENTS):
            tensors.update({f"{name}.{k}": state[k].detach().cpu().contiguous() for k in MOMENTS})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / FILE)
    return len(tensors) // len(MOMENTS)


def load_moments(optimizer: torch.optim.Optimizer, module: torch.nn.Module, folder: Path) -> int:
    """Put the Adam state saved in `folder` into `optimizer` for `module`'s parameters (same names,
    same shapes); returns how many parameters got one. A parameter the file lacks starts fresh."""
    path = folder / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no optimizer state was saved at this branch point; re-run text-pretrain "
                                "with `pretrain.save_optimizer: true`")
    saved = load_file(path)
    carried = 0
    for name, p in module.named_parameters():
        if f"{name}.exp_avg" not in saved:
            continue
        if saved[f"{name}.exp_avg"].shape != p.shape:
            raise ValueError(f"{path}: `{name}` has shape {tuple(saved[f'{name}.exp_avg'].shape)}, the model's "
                             f"{tuple(p.shape)}: saved by another model")
        optimizer.state[p] = {k: saved[f"{name}.{k}"].to(p.device, torch.float32 if k == "step" else p.dtype)
                              for k in MOMENTS}
        carried += 1
    if saved and not carried:
        raise ValueError(f"{path}: none of its parameter names is one of the model's: saved by another model")
    return carried
