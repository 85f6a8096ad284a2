"""DVC stage `branch-at-fraction`: pick the text run's weights at `branch.fraction`.

0.0 means from scratch (the text run's own initial weights, same seed); any other value is a
saved branch point (checked with the params). Writes data/branch/ (LM weights, the text run's Adam
moments there when it saved them, and branch.json: step, tokens seen and the main schedule's LR
there), so changing the fraction re-runs from here on and never the text run.
"""

from __future__ import annotations

import shutil

from pipeline.common import codec, new_lm
from pipeline.paths import BRANCH, PRETRAIN
from vlm.config import Config
from vlm.io import atomic_dir, read_json, write_json
from vlm.model import store
from vlm.training.moments import FILE as MOMENTS_FILE
from vlm.training.schedules import warmup_cosine


def run(cfg: Config) -> None:
    fraction = cfg.branch.fraction
    schedule = read_json(PRETRAIN / "schedule.json")
    points = {float(f): s for f, s in schedule["branch_points"].items()}
    if fraction and not any(abs(fraction - f) < 1e-9 for f in points):  # data/pretrain from other params
        raise ValueError(f"{PRETRAIN}/schedule.json has no branch point {fraction} (it has {sorted(points)}); "
                         "re-run text-pretrain")
    step = 0 if fraction == 0 else points[min(points, key=lambda f: abs(f - fraction))]
    if step:
        lm = store.load_lm(PRETRAIN / f"ba{step}")
    else:
        lm = new_lm(schedule["preset"], codec().vocab_size, schedule["seed"])
    info = {
        "fraction": fraction,
        "step": step,
        "tokens_seen": step * schedule["tokens_per_step"],
        "lr": warmup_cosine(step, schedule["steps"], schedule["lr"], schedule["warmup_steps"],
                            schedule["final_lr_ratio"]),
        "main_schedule": {k: schedule[k] for k in ("steps", "lr", "warmup_steps", "final_lr_ratio")},
    }
    moments = PRETRAIN / f"ba{step}" / MOMENTS_FILE
    info["optimizer_state"] = bool(step) and moments.is_file()
    with atomic_dir(BRANCH) as tmp:
        store.save(lm, tmp)
        if info["optimizer_state"]:
            shutil.copy2(moments, tmp / MOMENTS_FILE)
        write_json(tmp / "branch.json", info)
    print(f"branch-at-fraction: {fraction:.0%} -> step {step}, {info['tokens_seen']:,} tokens, "
          f"main-schedule LR {info['lr']:.3g}", flush=True)
