"""Learning-rate schedules of the study, as Composer schedulers plus the closed forms they follow.

- main (text-pretrain): linear warmup to `lr`, then cosine decay to `lr * final_ratio` at the end
  of the whole budget (Composer's CosineAnnealingWithWarmupScheduler).
- cooldown, continuing: starts at the branch LR the main schedule had and decays it by cosine to
  `branch_lr * final_ratio` over the cooldown budget (CosineAnnealingScheduler, no warmup).
- cooldown / finetune, re-warmed: warmup to its own peak, then cosine (as the main schedule). A
  cooldown re-warms where `branch.rewarm` says: by default at 0% (from scratch, the LR is 0) and
  100% (the LR has already decayed), as in the study (`BranchConfig.rewarms`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from composer.optim import CosineAnnealingScheduler, CosineAnnealingWithWarmupScheduler
from composer.optim.scheduler import ComposerScheduler


def warmup_cosine(step: int, total: int, peak: float, warmup: int, final_ratio: float) -> float:
    """LR after `step` batches of a warmup + cosine schedule (the formula Composer implements)."""
    if step < warmup:
        return peak * step / warmup
    frac = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def warmup_cosine_scheduler(warmup: int, final_ratio: float) -> ComposerScheduler:
    return CosineAnnealingWithWarmupScheduler(t_warmup=f"{warmup}ba", alpha_f=final_ratio)


@dataclass
class CooldownPlan:
    mode: str  # "continue" or "rewarm"
    peak_lr: float  # the optimizer's base LR: the branch LR (continue) or the re-warm peak
    warmup: int
    final_ratio: float

    def lr(self, step: int, total: int) -> float:
        return warmup_cosine(step, total, self.peak_lr, self.warmup, self.final_ratio)

    def scheduler(self) -> ComposerScheduler:
        if self.mode == "continue":
            return CosineAnnealingScheduler(alpha_f=self.final_ratio)
        return warmup_cosine_scheduler(self.warmup, self.final_ratio)


def cooldown_plan(branch_lr: float, rewarm: bool, rewarm_lr: float, warmup: int, final_ratio: float) -> CooldownPlan:
    """Re-warm to `rewarm_lr`, or continue from the branch LR."""
    if rewarm:
        return CooldownPlan("rewarm", rewarm_lr, warmup, final_ratio)
    return CooldownPlan("continue", branch_lr, 0, final_ratio)
