"""LR schedules: the closed forms, the cooldown rule, and the Composer schedulers that must follow them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from composer.core import State, Timestamp
from composer.devices import DeviceCPU

from vlm.config import BranchConfig
from vlm.training.schedules import cooldown_plan, warmup_cosine, warmup_cosine_scheduler

TOTAL, WARMUP, PEAK, FINAL = 100, 10, 2.0, 0.1


def lr(step: int, total: int = TOTAL, warmup: int = WARMUP) -> float:
    return warmup_cosine(step, total, PEAK, warmup, FINAL)


def composer_state(total: int) -> State:
    """A bare Composer State of a `total`-batch run, enough to evaluate a scheduler."""
    return State(model=torch.nn.Linear(1, 1), rank_zero_seed=0, run_name="schedule-test", device=DeviceCPU(),
                 max_duration=f"{total}ba")


def multipliers(scheduler, total: int, steps: list[int]) -> list[float]:
    """The scheduler's factor on the base LR after each of `steps` batches."""
    state = composer_state(total)
    out = []
    for k in steps:
        state.timestamp = Timestamp(batch=k, sample=4 * k)
        out.append(float(scheduler(state)))
    return out


# ---- closed form --------------------------------------------------------------------------------

def test_warmup_cosine_closed_form():
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(PEAK / 2)
    assert lr(1) == pytest.approx(PEAK / WARMUP)
    assert lr(WARMUP) == pytest.approx(PEAK)
    assert lr(TOTAL) == pytest.approx(PEAK * FINAL)
    midpoint = WARMUP + (TOTAL - WARMUP) // 2
    assert lr(midpoint) == pytest.approx(PEAK * (FINAL + (1 - FINAL) / 2))
    quarter = WARMUP + (TOTAL - WARMUP) // 4
    frac = (quarter - WARMUP) / (TOTAL - WARMUP)
    assert lr(quarter) == pytest.approx(PEAK * (FINAL + (1 - FINAL) * 0.5 * (1 + math.cos(math.pi * frac))))


def test_warmup_cosine_shape():
    values = [lr(k) for k in range(TOTAL + 1)]
    assert all(a < b for a, b in zip(values[:WARMUP], values[1 : WARMUP + 1], strict=True))  # rising
    assert all(a > b for a, b in zip(values[WARMUP:-1], values[WARMUP + 1 :], strict=True))  # decaying
    assert max(values) == pytest.approx(PEAK) and min(values[WARMUP:]) == pytest.approx(PEAK * FINAL)
    assert lr(TOTAL + 50) == pytest.approx(PEAK * FINAL)  # held after the end


def test_warmup_cosine_without_warmup_starts_at_peak():
    assert lr(0, warmup=0) == pytest.approx(PEAK)
    assert lr(TOTAL // 2, warmup=0) == pytest.approx(PEAK * (FINAL + (1 - FINAL) / 2))
    assert lr(TOTAL, warmup=0) == pytest.approx(PEAK * FINAL)


# ---- cooldown rule ------------------------------------------------------------------------------

@pytest.mark.parametrize("branch_lr", [0.0, 1e-5, 1e-3])
def test_a_rewarmed_cooldown_warms_up_to_its_own_peak_whatever_the_branch_lr(branch_lr):
    plan = cooldown_plan(branch_lr, rewarm=True, rewarm_lr=3e-4, warmup=20, final_ratio=FINAL)
    assert plan.mode == "rewarm"
    assert plan.peak_lr == 3e-4 and plan.warmup == 20 and plan.final_ratio == FINAL
    assert plan.lr(0, 200) == 0.0
    assert plan.lr(20, 200) == pytest.approx(3e-4)
    assert plan.lr(200, 200) == pytest.approx(3e-4 * FINAL)


@pytest.mark.parametrize("branch_lr", [1e-5, 2.5e-4, 1e-3])
def test_a_continued_cooldown_starts_at_the_branch_lr_whatever_it_is(branch_lr):
    plan = cooldown_plan(branch_lr, rewarm=False, rewarm_lr=3e-4, warmup=20, final_ratio=FINAL)
    assert plan.mode == "continue"
    assert plan.peak_lr == branch_lr and plan.warmup == 0
    assert plan.lr(0, 200) == pytest.approx(branch_lr)
    assert plan.lr(100, 200) == pytest.approx(branch_lr * (FINAL + (1 - FINAL) / 2))
    assert plan.lr(200, 200) == pytest.approx(branch_lr * FINAL)


@pytest.mark.parametrize(("fraction", "rewarm", "expected"), [
    (0.0, "auto", True), (0.2, "auto", False), (0.8, "auto", False), (1.0, "auto", True),
    (0.8, True, True), (1.0, False, False), (0.0, False, False),
])
def test_branch_rewarm_auto_rewarms_at_zero_and_one_only(fraction, rewarm, expected):
    assert BranchConfig(fraction=fraction, rewarm=rewarm, optimizer="reset").rewarms() is expected


# ---- Composer schedulers follow the closed forms ------------------------------------------------

STEPS = [0, 1, 5, 9, 10, 11, 30, 55, 77, 99, 100]


def test_composer_warmup_cosine_matches_closed_form():
    got = multipliers(warmup_cosine_scheduler(WARMUP, FINAL), TOTAL, STEPS)
    want = [lr(k) / PEAK for k in STEPS]
    assert got == pytest.approx(want, abs=1e-9)
    assert got[STEPS.index(WARMUP)] == pytest.approx(1.0) and got[-1] == pytest.approx(FINAL)


@pytest.mark.parametrize(("branch_lr", "mode"), [(0.0, "rewarm"), (5e-5, "rewarm"), (2e-4, "continue")])
def test_cooldown_scheduler_matches_plan(branch_lr, mode):
    total = 60
    plan = cooldown_plan(branch_lr, mode == "rewarm", rewarm_lr=3e-4, warmup=6, final_ratio=0.2)
    assert plan.mode == mode
    steps = [0, 1, 3, 6, 7, 20, 33, 59, 60]
    got = [m * plan.peak_lr for m in multipliers(plan.scheduler(), total, steps)]
    assert got == pytest.approx([plan.lr(k, total) for k in steps], abs=1e-12)
    assert got[0] == (0.0 if mode == "rewarm" else pytest.approx(branch_lr))


@pytest.mark.parametrize("fraction, mode", [(0.0, "rewarm"), (0.6, "continue"), (1.0, "rewarm")])
def test_the_study_lr_rule_on_the_default_params(fraction, mode):
    """The default params.yaml: branches at 0% and 100% re-warm, 60% continues from the main schedule."""
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    pt, cd = params["pretrain"], params["cooldown"]
    step = round(fraction * pt["steps"])
    branch_lr = warmup_cosine(step, pt["steps"], pt["lr"], pt["warmup_steps"], pt["final_lr_ratio"])
    rewarm = BranchConfig(**{**params["branch"], "fraction": fraction}).rewarms()
    plan = cooldown_plan(branch_lr, rewarm, cd["rewarm_lr"], cd["warmup_steps"], cd["final_lr_ratio"])
    assert plan.mode == mode
    total = cd["steps"]
    if mode == "continue":  # cosine from the branch LR down to branch LR * final ratio, no warmup
        assert plan.lr(0, total) == pytest.approx(branch_lr)
        half = branch_lr * (cd["final_lr_ratio"] + (1 - cd["final_lr_ratio"]) * 0.5)
        assert plan.lr(total // 2, total) == pytest.approx(half, rel=1e-6)
    else:  # linear warmup to the re-warm peak, then cosine
        assert plan.lr(0, total) == 0.0
        assert plan.lr(cd["warmup_steps"], total) == pytest.approx(cd["rewarm_lr"])
    assert plan.lr(total, total) == pytest.approx(plan.peak_lr * cd["final_lr_ratio"])
