"""DVC stage `mixed-cooldown`: image-text pre-training branched off the text run.

Builds the VLM (the branch LM, the frozen open_clip encoder from data/encoder, a new MLP
projector) and trains it on text + image-caption (+ optional instruction) streams mixed by
Streaming at the token shares `cooldown.image_ratio` / `cooldown.instruct_ratio` (design.md).
LR: continue from the branch LR, or re-warm where `branch.rewarm` says (schedules.py). Adam: fresh,
or with `branch.optimizer: carry` the text run's moments at the branch for the LM (moments.py).
Writes data/cooldown/, metrics/cooldown.json (LR plan, batch mix, realised token shares) and
logs/cooldown.csv. Resumes after a crash (vlm/training/resume.py).
"""

from __future__ import annotations

import time

from pipeline.common import (
    build_vlm_from,
    codec,
    curve_paths,
    feature_store,
    image_collator,
    resume_for,
    write_metrics,
)
from pipeline.paths import BRANCH, COOLDOWN, ENCODER, FEATURES, SHARDS
from pipeline.streams import shards
from vlm.config import Config, CooldownConfig
from vlm.data.mixing import batch_counts, token_shares
from vlm.io import atomic_dir, read_json
from vlm.model import store
from vlm.training.callbacks import TokenShare, count_params
from vlm.training.composer_model import ComposerLM
from vlm.training.data import loader, mixed_dataset
from vlm.training.moments import load_moments
from vlm.training.schedules import cooldown_plan
from vlm.training.trainer import is_main, join_processes, make_trainer, per_rank


def mean_tokens(stats: dict, num_image_tokens: int) -> dict[str, float]:
    """Mean training tokens per sample of each source, image tokens included."""
    out = {}
    for name in ("text", "captions", "instruct"):
        s = stats[f"{name}/train"]
        out[name] = s["mean_tokens"] + s["images"] / s["samples"] * (num_image_tokens - 1)
    return out


def batch_mix(cd: CooldownConfig, stats: dict, num_image_tokens: int) -> tuple[dict[str, float], dict[str, int]]:
    """(mean tokens per sample, samples per global batch) of each source at the cooldown's token shares."""
    means = mean_tokens(stats, num_image_tokens)
    shares = {"text": 1 - cd.image_ratio - cd.instruct_ratio, "captions": cd.image_ratio,
              "instruct": cd.instruct_ratio}
    return means, batch_counts(shares, means, cd.batch_size)


def carry_optimizer(cfg: Config, branch: dict, trainer, vlm) -> str:
    """With `branch.optimizer: carry`, the text run's Adam moments for the LM's parameters ("carried";
    a run from scratch, at 0.0, has none: "fresh"). A resumed run has them in its checkpoint already."""
    if cfg.branch.optimizer != "carry" or not branch["step"]:
        return "fresh"
    if not trainer.state.timestamp.batch.value:
        carried = load_moments(trainer.state.optimizers[0], vlm.lm, BRANCH)
        print(f"mixed-cooldown: carried Adam's moments of {carried} LM parameters from the text run's step "
              f"{branch['step']}", flush=True)
    return "carried"


def run(cfg: Config) -> None:
    join_processes()
    cd = cfg.cooldown
    branch = read_json(BRANCH / "branch.json")
    plan = cooldown_plan(branch["lr"], cfg.branch.rewarms(), cd.rewarm_lr, cd.warmup_steps, cd.final_lr_ratio)
    cdc = codec()
    vlm = build_vlm_from(store.load_lm(BRANCH), ENCODER, cdc, freeze=cfg.vision.freeze, seed=cfg.branch_seed)
    means, counts = batch_mix(cd, read_json(SHARDS / "stats.json"), vlm.num_image_tokens)
    expected = token_shares(counts, means)
    print(
        f"mixed-cooldown: from branch {branch['fraction']:.0%} (LR {branch['lr']:.3g}) -> {plan.mode} at "
        f"{plan.peak_lr:.3g}; {cd.steps} steps, per batch {counts} samples, expected token shares "
        + ", ".join(f"{k} {v:.3f}" for k, v in expected.items()),
        flush=True,
    )
    batch = per_rank(cd.batch_size, "cooldown.batch_size")
    ds = mixed_dataset({shards(cfg, k): n for k, n in counts.items()}, "train", batch, cfg.branch_seed,
                       cd.steps * cd.batch_size)
    collate = image_collator(cdc, vlm, blank=cfg.vision.blank_images, features=feature_store(cfg, FEATURES, ENCODER))
    share = TokenShare(cdc.ids["pad"])
    t0 = time.time()
    resume = resume_for("mixed-cooldown", cfg)
    train = loader(ds, collate, batch, cfg.train.split_by_length)
    trainer = make_trainer(
        ComposerLM(vlm), train, f"{cd.steps}ba", plan.peak_lr, plan.scheduler(),
        "mixed-cooldown", cfg.branch_seed, **curve_paths("cooldown"), resume=resume, callbacks=[share],
        microbatch_size=cfg.train.microbatch_size, fsdp=cfg.train.fsdp,
    )
    optimizer = carry_optimizer(cfg, branch, trainer, vlm)
    trainer.fit()
    weights = store.full_weights(vlm)  # with FSDP: every process hands in its shards
    trainer.close()
    if not is_main():  # the first process writes the outputs
        return
    with atomic_dir(COOLDOWN) as tmp:
        store.save(vlm, tmp, weights=weights)
    resume.done()
    realised = share.shares()
    write_metrics("cooldown", {
        "lr_mode": plan.mode, "start_lr": plan.peak_lr, "branch_lr": branch["lr"],
        "optimizer": optimizer,
        "batch_counts": counts, "expected_token_share": expected, "realised_token_share": realised,
        "image_ratio_error": abs(realised["captions"] - cd.image_ratio), "tokens": sum(share.tokens.values()),
        **count_params(vlm),
    }, time.time() - t0)
    print(f"mixed-cooldown: done in {time.time() - t0:.1f}s; realised image token share {realised['captions']:.3f} "
          f"(param {cd.image_ratio})", flush=True)
