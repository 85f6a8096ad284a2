"""DVC stage `evaluate`: score the model after each phase on vision and text tasks.

Phases: `text_pretrain` (the text run's last checkpoint; text tasks only, it has no eyes),
`cooldown` and `finetune` (the headline). Per task: accuracy, chance and stable score; per phase:
`vision_stable`, `text_stable` and their mean. Writes metrics/eval.json (its top-level scores are
the fine-tuned model's) and logs/scores.json, the same stable scores as one row per phase and task or
group: a DVC bar plot, so `dvc plots diff EXP_A EXP_B` sets experiments' scores side by side.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from pipeline.common import codec, feature_store, image_collator
from pipeline.paths import COOLDOWN, ENCODER, FEATURES, FINETUNE, PRETRAIN, RAW, TIMINGS
from vlm.config import Config
from vlm.data import readers
from vlm.evaluation.metrics import stable_score, summarise
from vlm.evaluation.scoring import score_mc, score_pope, score_vqa
from vlm.io import read_json, write_json
from vlm.model import store

EVAL, METRICS, EXAMPLES = RAW / "eval", Path("metrics/eval.json"), Path("logs/eval_examples.json")
PLOT = Path("logs/scores.json")
VISION_TASKS, TEXT_TASKS = ("vqa", "pope"), ("text_mc",)
SCORES = ("vision_stable", "text_stable", "stable_mean")
load_image = functools.cache(readers.load_image)  # each eval image is decoded once, not once per phase


def images_for(collate):
    """How `collate` takes an evaluation image (a Path): its file's bytes, the key of its cached
    features; else decoded."""
    return Path.read_bytes if collate.features is not None else load_image


def evaluate_phase(tasks: dict, cdc, lm, vlm=None, collate=None, batch_size=64, max_new_tokens=4) -> dict:
    scores = {}
    for name, task in tasks.items():
        if task["kind"] == "mc":
            result = score_mc(lm, cdc, task["items"])
        elif vlm is None:
            continue
        elif task["kind"] == "vqa":
            result = score_vqa(vlm, collate, cdc, task["items"], images_for(collate), batch_size, max_new_tokens)
        else:
            result = score_pope(vlm, collate, cdc, task["items"], images_for(collate), batch_size, max_new_tokens)
        result["chance"] = task["chance"]
        result["stable"] = stable_score(result["accuracy"], task["chance"])
        scores[name] = result
    return summarise(scores, [t for t in VISION_TASKS if t in scores], [t for t in TEXT_TASKS if t in scores])


def plot_rows(phases: dict) -> list[dict]:
    """One row per phase and task (stable score, accuracy) or group (stable score): DVC plot data."""
    rows = []
    for phase, result in phases.items():
        for name, r in result.items():
            if isinstance(r, dict):
                rows.append({"score": f"{phase}/{name}", "stable": r["stable"], "accuracy": r["accuracy"]})
            elif name in SCORES and r is not None:
                rows.append({"score": f"{phase}/{name}", "stable": r})
    return rows


def run(cfg: Config) -> None:
    batch_size, max_new, blank = cfg.evaluate.batch_size, cfg.evaluate.max_new_tokens, cfg.vision.blank_images
    t0 = time.time()
    tasks = readers.load_tasks(EVAL)
    cdc = codec()
    last = max(read_json(PRETRAIN / "schedule.json")["branch_points"].values())
    text_lm = store.load_lm(PRETRAIN / f"ba{last}")

    phases = {"text_pretrain": evaluate_phase(tasks, cdc, text_lm.eval())}
    features = feature_store(cfg, FEATURES, ENCODER)
    for phase, folder in (("cooldown", COOLDOWN), ("finetune", FINETUNE)):
        vlm = store.load_vlm(folder, ENCODER).eval()
        collate = image_collator(cdc, vlm, blank=blank, features=features)
        phases[phase] = evaluate_phase(tasks, cdc, vlm.lm, vlm, collate, batch_size, max_new)
        print(f"evaluate: {phase}: " + ", ".join(
            f"{n} {phases[phase][n]['accuracy']:.3f}" for n in tasks if n in phases[phase]), flush=True)
    final = phases["finetune"]
    metrics = {k: final[k] for k in SCORES if final[k] is not None}
    metrics["tasks"] = {n: {k: v for k, v in final[n].items() if k != "examples"} for n in tasks}
    metrics["phases"] = {p: {k: r[k] for k in SCORES if r.get(k) is not None} for p, r in phases.items()}
    missing = [g for g, names in (("vision", VISION_TASKS), ("text", TEXT_TASKS)) if not set(names) & set(tasks)]
    if missing:  # a user's sources without a text (or vision) task: the other scores still stand
        metrics["missing_groups"] = ", ".join(missing)
        print(f"evaluate: no {' or '.join(missing)} task in data/raw/eval/tasks.json, so no "
              f"{', '.join(g + '_stable' for g in missing)}; stable_mean is over the groups present", flush=True)
    write_json(METRICS, metrics)
    write_json(PLOT, plot_rows(phases))
    write_json(EXAMPLES, {p: r["vqa"]["examples"] for p, r in phases.items() if "vqa" in r})
    write_json(TIMINGS / "evaluate.json", {"seconds": round(time.time() - t0, 1)})
    print(f"evaluate: done in {time.time() - t0:.0f}s; " + ", ".join(
        f"{k} {metrics[k]:.3f}" for k in SCORES if k in metrics), flush=True)
