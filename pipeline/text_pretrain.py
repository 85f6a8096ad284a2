"""DVC stage `text-pretrain`: Composer trains the LM from scratch on the text shards.

Main schedule: linear warmup, cosine decay over the whole token budget. A Composer checkpoint is
saved exactly at each fraction of `pretrain.branch_points` of the budget (and nowhere else), with
the validation loss measured there. Writes data/pretrain/ (checkpoints/ba{N}.pt, schedule.json,
model config), metrics/pretrain.json and the curve logs/pretrain.csv.
"""

from __future__ import annotations

import time
from pathlib import Path

from composer.core import Event

from pipeline.common import codec, new_lm
from pipeline.paths import PRETRAIN, SHARDS
from vlm import params as P
from vlm.io import atomic_dir, write_json
from vlm.model.lm import num_params
from vlm.training.composer_model import ComposerLM
from vlm.training.data import Collator, dataset, loader
from vlm.training.schedules import warmup_cosine, warmup_cosine_scheduler
from vlm.training.trainer import curves_of, make_trainer

METRICS, CURVES = Path("metrics/pretrain.json"), Path("logs/pretrain.csv")


def branch_steps(fractions: list, steps: int) -> dict[float, int]:
    """{fraction: step}; every fraction must land exactly on a step of the budget."""
    if not isinstance(fractions, list) or not fractions:
        raise P.ParamError("params.yaml: `pretrain.branch_points` must be a non-empty list of fractions")
    out = {}
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise P.ParamError(f"params.yaml: `pretrain.branch_points` entries must be in (0, 1], got {f!r}")
        step = round(f * steps)
        if abs(step - f * steps) > 1e-6:
            raise P.ParamError(
                f"params.yaml: branch point {f} of `pretrain.steps` {steps} is not a whole step "
                f"({f * steps:g}); choose steps divisible accordingly"
            )
        out[float(f)] = step
    return out


def main() -> None:
    params = P.load()
    seed = P.integer(params, "seed", lo=0)
    preset = P.choice(params, "model.preset", P.PRESETS)
    seq_len = P.integer(params, "shard.seq_len", lo=8)
    steps = P.positive_int(params, "pretrain.steps")
    batch = P.positive_int(params, "pretrain.batch_size")
    lr = P.real(params, "pretrain.lr", 0.0, 1.0, lo_open=True)
    warmup = P.integer(params, "pretrain.warmup_steps", 0, steps)
    final_ratio = P.fraction(params, "pretrain.final_lr_ratio")
    weight_decay = P.real(params, "pretrain.weight_decay", 0.0)
    points = branch_steps(P.get(params, "pretrain.branch_points"), steps)
    save_at = set(points.values())

    cdc = codec()
    lm = new_lm(preset, cdc.vocab_size, seed)
    model = ComposerLM(lm)
    collate = Collator(cdc.ids)
    train = loader(dataset(SHARDS / "text", "train", batch, seed), collate, batch)
    val = loader(dataset(SHARDS / "text", "val", batch, seed, shuffle=False), collate, batch)
    tokens_per_step = batch * seq_len
    print(
        f"text-pretrain: {preset} LM, {num_params(lm):,} params, {steps} steps x "
        f"{tokens_per_step} tokens = {steps * tokens_per_step:,} tokens; checkpoints at steps {sorted(save_at)}",
        flush=True,
    )

    def at_branch_point(state, event) -> bool:
        return event in (Event.BATCH_CHECKPOINT, Event.BATCH_END) and state.timestamp.batch.value in save_at

    t0 = time.time()
    with atomic_dir(PRETRAIN) as tmp:
        trainer = make_trainer(
            model, train, f"{steps}ba", lr, warmup_cosine_scheduler(warmup, final_ratio), CURVES, seed,
            run_name="text-pretrain", weight_decay=weight_decay, eval_data=val, eval_interval=at_branch_point,
            save_folder=tmp / "checkpoints", save_interval=at_branch_point,
        )
        trainer.fit()
        val_loss = curves_of(trainer).rows
        schedule = {
            "steps": steps, "tokens_per_step": tokens_per_step, "lr": lr, "warmup_steps": warmup,
            "final_lr_ratio": final_ratio, "branch_points": {str(f): s for f, s in points.items()},
            "preset": preset, "seed": seed,
        }
        write_json(tmp / "schedule.json", schedule)
        trainer.close()
    metrics = {
        "val_loss": {str(f): val_loss.get(s, {}).get("val_loss") for f, s in points.items()},
        "tokens": steps * tokens_per_step,
        "lr_at_branch_points": {str(f): warmup_cosine(s, steps, lr, warmup, final_ratio) for f, s in points.items()},
        "seconds": round(time.time() - t0, 1),
    }
    write_json(METRICS, metrics)
    print(f"text-pretrain: done in {metrics['seconds']}s; val loss {metrics['val_loss']}", flush=True)


if __name__ == "__main__":
    main()
