"""DVC stage `mixed-cooldown`: image-text pre-training branched off the text run.

Builds the VLM (the branch LM, the frozen open_clip encoder from data/encoder, a new MLP
projector) and trains it on text + image-caption (+ optional instruction) streams mixed by
Streaming at the token shares `cooldown.image_ratio` / `cooldown.instruct_ratio` (design.md).
LR: continue from the branch LR, or re-warm below `cooldown.min_continue_lr` (schedules.py).
Writes data/cooldown/, metrics/cooldown.json (LR plan, batch mix, realised token shares) and
logs/cooldown.csv.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.common import build_vlm_from, codec, image_collator
from pipeline.paths import BRANCH, COOLDOWN, ENCODER, SHARDS
from vlm import params as P
from vlm.data.mixing import batch_counts, token_shares
from vlm.io import atomic_dir, read_json, write_json
from vlm.model import store
from vlm.training.callbacks import TokenShare, count_params
from vlm.training.composer_model import ComposerLM
from vlm.training.data import loader, mixed_dataset
from vlm.training.schedules import cooldown_plan
from vlm.training.trainer import make_trainer

METRICS, CURVES = Path("metrics/cooldown.json"), Path("logs/cooldown.csv")


def mean_tokens(stats: dict, num_image_tokens: int) -> dict[str, float]:
    """Mean training tokens per sample of each source, image tokens included."""
    out = {}
    for name in ("text", "captions", "instruct"):
        s = stats[f"{name}/train"]
        out[name] = s["mean_tokens"] + s["images"] / s["samples"] * (num_image_tokens - 1)
    return out


def main() -> None:
    params = P.load()
    seed = P.integer(params, "seed", lo=0)
    steps = P.positive_int(params, "cooldown.steps")
    batch = P.positive_int(params, "cooldown.batch_size")
    image_ratio = P.fraction(params, "cooldown.image_ratio")
    instruct_ratio = P.fraction(params, "cooldown.instruct_ratio")
    if image_ratio + instruct_ratio > 1:
        raise P.ParamError(
            f"params.yaml: `cooldown.image_ratio` + `cooldown.instruct_ratio` = {image_ratio + instruct_ratio} > 1"
        )
    min_continue = P.real(params, "cooldown.min_continue_lr", 0.0)
    rewarm_lr = P.real(params, "cooldown.rewarm_lr", 0.0, 1.0, lo_open=True)
    warmup = P.integer(params, "cooldown.warmup_steps", 0, steps)
    final_ratio = P.fraction(params, "cooldown.final_lr_ratio")
    freeze = P.get(params, "vision.freeze")
    blank = P.get(params, "vision.blank_images")

    branch = read_json(BRANCH / "branch.json")
    plan = cooldown_plan(branch["lr"], min_continue, rewarm_lr, warmup, final_ratio)
    cdc = codec()
    vlm = build_vlm_from(store.load_lm(BRANCH), ENCODER, cdc, freeze=bool(freeze), seed=seed)
    stats = read_json(SHARDS / "stats.json")
    means = mean_tokens(stats, vlm.num_image_tokens)
    shares = {"text": 1 - image_ratio - instruct_ratio, "captions": image_ratio, "instruct": instruct_ratio}
    try:
        counts = batch_counts(shares, means, batch)
    except ValueError as e:
        raise P.ParamError(f"params.yaml: `cooldown.batch_size` {batch}: {e}") from e
    expected = token_shares(counts, means)
    print(
        f"mixed-cooldown: from branch {branch['fraction']:.0%} (LR {branch['lr']:.3g}) -> {plan.mode} at "
        f"{plan.peak_lr:.3g}; {steps} steps, per batch {counts} samples, expected token shares "
        + ", ".join(f"{k} {v:.3f}" for k, v in expected.items()),
        flush=True,
    )
    ds = mixed_dataset({SHARDS / k: n for k, n in counts.items()}, "train", batch, seed, steps * batch)
    collate = image_collator(cdc, vlm, blank=bool(blank))
    share = TokenShare(cdc.ids["pad"])
    t0 = time.time()
    trainer = make_trainer(
        ComposerLM(vlm), loader(ds, collate, batch), f"{steps}ba", plan.peak_lr, plan.scheduler(), CURVES, seed,
        run_name="mixed-cooldown", callbacks=[share],
    )
    trainer.fit()
    trainer.close()
    with atomic_dir(COOLDOWN) as tmp:
        store.save(vlm, tmp)
    realised = share.shares()
    write_json(METRICS, {
        "lr_mode": plan.mode, "start_lr": plan.peak_lr, "branch_lr": branch["lr"],
        "batch_counts": counts, "expected_token_share": expected, "realised_token_share": realised,
        "image_ratio_error": abs(realised["captions"] - image_ratio), "tokens": sum(share.tokens.values()),
        "seconds": round(time.time() - t0, 1), **count_params(vlm),
    })
    print(f"mixed-cooldown: done; realised image token share {realised['captions']:.3f} "
          f"(param {image_ratio})", flush=True)


if __name__ == "__main__":
    main()
