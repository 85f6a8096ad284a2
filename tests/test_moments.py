"""Adam's moments carried across the branch (vlm/training/moments.py): saved by the text run, put back
into a cooldown optimizer whose model holds the LM beside new parts."""

from __future__ import annotations

import copy

import pytest
import torch
from composer.optim import DecoupledAdamW

from pipeline.common import new_lm
from vlm.training.moments import FILE, load_moments, save_moments

HPARAMS = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0}


class Holder(torch.nn.Module):
    """The cooldown's shape: the branch LM under `.lm` beside a new projector."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm, self.projector = lm, torch.nn.Linear(4, 4)


def step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    """One Adam step on a loss whose gradient depends on the weights and on `seed`."""
    gen = torch.Generator().manual_seed(seed)
    optimizer.zero_grad()
    loss = sum(((p - torch.randn(p.shape, generator=gen)) ** 2).sum() for p in module.parameters())
    loss.backward()
    optimizer.step()


@pytest.fixture
def trained(tmp_path):
    """A tiny LM after 3 Adam steps, its moments saved, and its copy before the 4th step."""
    lm = new_lm("tiny", 300, seed=0)
    optimizer = DecoupledAdamW(lm.parameters(), **HPARAMS)
    for s in range(3):
        step(lm, optimizer, s)
    n = save_moments(lm, optimizer, tmp_path)
    return lm, optimizer, n, tmp_path


def test_carried_moments_continue_the_text_runs_adam_exactly(trained):
    lm, optimizer, n, folder = trained
    assert n == len(list(lm.parameters()))
    cooldown = Holder(copy.deepcopy(lm))
    carried = DecoupledAdamW(cooldown.parameters(), **HPARAMS)
    assert load_moments(carried, cooldown.lm, folder) == n
    assert cooldown.projector.weight not in carried.state  # new parts start fresh
    for p in cooldown.lm.parameters():
        assert carried.state[p]["step"].item() == 3
    fresh = Holder(copy.deepcopy(lm))
    reset = DecoupledAdamW(fresh.parameters(), **HPARAMS)
    step(lm, optimizer, 3)  # the text run's 4th step ...
    step(cooldown.lm, carried, 3)  # ... taken from the carried moments: the same weights
    step(fresh.lm, reset, 3)  # ... from fresh moments: other weights
    for (name, a), b in zip(lm.named_parameters(), cooldown.lm.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(lm.parameters(), fresh.lm.parameters(), strict=True))


def test_moments_of_another_model_are_refused_by_name(trained):
    _, _, _, folder = trained
    other = new_lm("tiny", 301, seed=0)  # another vocabulary: the embedding's shape differs
    with pytest.raises(ValueError, match="has shape .* saved by another model"):
        load_moments(DecoupledAdamW(other.parameters(), **HPARAMS), other, folder)
    with pytest.raises(ValueError, match="none of its parameter names"):
        load_moments(DecoupledAdamW(Holder(other).parameters(), **HPARAMS), Holder(other).projector, folder)


def test_a_branch_point_without_moments_names_the_missing_file(tmp_path):
    lm = new_lm("tiny", 300, seed=0)
    with pytest.raises(FileNotFoundError, match=f"{FILE}.*pretrain.save_optimizer"):
        load_moments(DecoupledAdamW(lm.parameters(), **HPARAMS), lm, tmp_path)
