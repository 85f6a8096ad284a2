"""DVC stage `evaluate`: score the model after each phase on vision and text tasks.

Phases: `text_pretrain` (the branch point the cooldown started from, data/branch: the text run at
`branch.fraction`, the untrained LM at 0.0; text tasks only, it has no eyes),
`cooldown` and `finetune` (the headline). Per task: accuracy with its standard error, chance and
stable score; POPE adds precision, recall, F1 and its yes ratio, VQA its accuracy per answer type.
Per phase: `vision_stable`, `text_stable` and their mean.

A caption-form task (the world's `caption_only`) is headlined from the `cooldown` phase: it asks
for words that only the image-caption data uses, which fine-tuning never says and erases (measured:
docs/world.md), so it measures what image-caption pre-training taught where that ends. Its
fine-tuned score stays beside it (`after_finetune`) and in the `finetune` phase.

Writes metrics/eval.json (its top-level scores are the fine-tuned model's, headline scores first, so
`dvc exp show` prints them first); logs/scores.json, the stable scores as one row per phase and task
or group (a DVC bar plot: `dvc plots diff EXP_A EXP_B` sets experiments side by side);
logs/eval_diagnostics.json, what the answers look like and warnings (also printed) when their form
cannot match the ground truth; logs/eval_examples.json, a few answers.

Started by Composer's launcher (`composer -n <train.nproc>`): several processes split every task
by whole batches and gather the answers, so the scores equal one process's.
"""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path

import torch
from composer.utils import dist

from pipeline.common import codec, environment, feature_store, image_collator, machine
from pipeline.paths import BRANCH, COOLDOWN, ENCODER, FEATURES, FINETUNE, RAW, TIMINGS
from vlm.config import Config
from vlm.data import readers
from vlm.evaluation.diagnostics import diagnose
from vlm.evaluation.metrics import mc_scores, pope_scores, summarise, vqa_scores, with_stable
from vlm.evaluation.sampling import subsample
from vlm.evaluation.scoring import answer, choose, choose_captions, in_order
from vlm.io import write_json
from vlm.model import store

EVAL, METRICS, PLOT = RAW / "eval", Path("metrics/eval.json"), Path("logs/scores.json")
EXAMPLES, DIAGNOSTICS = Path("logs/eval_examples.json"), Path("logs/eval_diagnostics.json")
VISION_KINDS, TEXT_KINDS = ("vqa", "pope", "caption"), ("mc",)
HEADLINE_PHASE = {"caption": "cooldown"}  # task kind -> the phase its headline score comes from (else finetune)
SCORES = ("vision_stable", "text_stable", "stable_mean")
HEADLINE = tuple(k for s in SCORES for k in (s, f"{s}_se"))
STRATUM = {"vqa": lambda it: it["answer_type"], "pope": lambda it: it["label"], "mc": lambda it: "",
           "caption": lambda it: it["answer"]}
load_image = functools.cache(readers.load_image)  # each eval image is decoded once, not once per phase


def eval_device(name: str) -> torch.device:
    """`evaluate.device`: auto is this process's GPU when there is one, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("evaluate: `evaluate.device` is cuda, but torch sees no CUDA device here; "
                         "use auto or cpu (params.yaml)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.get_local_rank())


def log(message: str) -> None:
    """Printed by the first process only: the others compute the same lines."""
    if dist.get_global_rank() == 0:
        print(f"evaluate: {message}", flush=True)


def images_for(collate):
    """How `collate` takes an evaluation image (a Path): its file's bytes, the key of its cached
    features; else decoded."""
    return Path.read_bytes if collate.features is not None else load_image


def gathered(local: dict, n: int) -> list:
    """Every process's {item index: prediction}, merged and in item order."""
    merged = {}
    for part in dist.all_gather_object(local):
        merged.update(part)
    return in_order(merged, n)


def evaluate_phase(phase: str, tasks: dict, cdc, lm, vlm=None, collate=None, batch_size=64,
                   max_new_tokens=4) -> tuple[dict, dict]:
    """The phase's scores (summarised) and the diagnostics of its open-ended tasks."""
    rank, world = dist.get_global_rank(), dist.get_world_size()
    scores, diagnostics = {}, {}
    for name, task in tasks.items():
        kind, items, t0 = task["kind"], task["items"], time.time()
        if kind == "mc":
            result = mc_scores(items, gathered(choose(lm, cdc, items, rank, world), len(items)))
        elif vlm is None:
            continue
        elif kind == "caption":
            result = mc_scores(items, gathered(choose_captions(vlm, collate, cdc, items, images_for(collate),
                                                               batch_size, rank, world), len(items)))
        else:
            key = "question" if kind == "vqa" else "text"
            preds = gathered(answer(vlm, collate, cdc, items, key, images_for(collate), batch_size,
                                    max_new_tokens, rank, world), len(items))
            result = (vqa_scores if kind == "vqa" else pope_scores)(items, preds)
            diagnostics[name] = diagnose(kind, items, preds)
            for warning in diagnostics[name]["warnings"]:
                log(f"WARNING {phase}/{name}: {warning}")
        scores[name] = with_stable(result, task["chance"])
        log(f"{phase}/{name}: accuracy {result['accuracy']:.3f} ± {result['accuracy_se'] or 0:.3f} "
            f"over {len(items)} items in {time.time() - t0:.1f}s")
    return grouped(scores, tasks), diagnostics


def grouped(scores: dict, tasks: dict) -> dict:
    """Task scores plus their vision and text group means (`summarise`), groups by task kind."""
    return summarise(scores, [n for n in scores if tasks[n]["kind"] in VISION_KINDS],
                     [n for n in scores if tasks[n]["kind"] in TEXT_KINDS])


def headline(tasks: dict, phases: dict) -> dict:
    """The fine-tuned model's scores, but each task of a HEADLINE_PHASE kind from that phase (with
    `phase` and its fine-tuned accuracy `after_finetune`), group scores recomputed over them."""
    scores = {}
    for name, task in tasks.items():
        if name not in phases["finetune"]:
            continue
        phase = HEADLINE_PHASE.get(task["kind"], "finetune")
        scores[name] = phases["finetune"][name] if phase == "finetune" else {
            **phases[phase][name], "phase": phase, "after_finetune": phases["finetune"][name]["accuracy"]}
    return grouped(scores, tasks)


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


def headline_first(final: dict, tasks: dict, phases: dict) -> dict:
    """metrics/eval.json in the order `dvc exp show` prints its columns: the group scores with their
    errors, then per task accuracy, its error and the rest, then the phases."""
    metrics = {k: final[k] for k in HEADLINE if final.get(k) is not None}
    metrics["tasks"] = {}
    for name in tasks:
        r = {k: v for k, v in final[name].items() if k != "examples"}
        first = ("accuracy", "accuracy_se", "stable", "stable_se")
        metrics["tasks"][name] = {**{k: r[k] for k in first}, **{k: r[k] for k in r if k not in first}}
    metrics["phases"] = {p: {k: r[k] for k in HEADLINE if r.get(k) is not None} for p, r in phases.items()}
    return metrics


def run(cfg: Config) -> None:
    ev, blank, t0 = cfg.evaluate, cfg.vision.blank_images, time.time()
    device = eval_device(ev.device)
    if dist.get_world_size() > 1:
        from composer.devices import DeviceCPU, DeviceGPU

        dist.initialize_dist(DeviceGPU() if device.type == "cuda" else DeviceCPU())
    autocast = (functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext)
    tasks = readers.load_tasks(EVAL)
    for name, task in tasks.items():
        task["items"] = subsample(task["items"], ev.max_samples, cfg.seed, name, STRATUM[task["kind"]])
    sizes = ", ".join(f"{n} {len(t['items'])}" for n, t in tasks.items())
    procs = f" in {dist.get_world_size()} processes" if dist.get_world_size() > 1 else ""
    log(f"items per task: {sizes}; on {device}{procs}")
    cdc = codec()
    text_lm = store.load_lm(BRANCH).to(device).eval()  # what the cooldown started from, as the paper compares

    with autocast():
        phases, diagnostics = {}, {}
        phases["text_pretrain"], _ = evaluate_phase("text_pretrain", tasks, cdc, text_lm)
        features = feature_store(cfg, FEATURES, ENCODER)
        for phase, folder in (("cooldown", COOLDOWN), ("finetune", FINETUNE)):
            vlm = store.load_vlm(folder, ENCODER).to(device).eval()
            collate = image_collator(cdc, vlm, blank=blank, features=features)
            phases[phase], diagnostics[phase] = evaluate_phase(phase, tasks, cdc, vlm.lm, vlm, collate,
                                                               ev.batch_size, ev.max_new_tokens)
    metrics = headline_first(headline(tasks, phases), tasks, phases)
    kinds = {t["kind"] for t in tasks.values()}
    missing = [g for g, group in (("vision", VISION_KINDS), ("text", TEXT_KINDS)) if not kinds & set(group)]
    if missing:  # a user's sources without a text (or vision) task: the other scores still stand
        metrics["missing_groups"] = ", ".join(missing)
        log(f"no {' or '.join(missing)} task in data/raw/eval/tasks.json, so no "
            f"{', '.join(g + '_stable' for g in missing)}; stable_mean is over the groups present")
    metrics["environment"] = environment(device.type)
    if dist.get_global_rank() == 0:
        write_json(METRICS, metrics, sort_keys=False)
        write_json(PLOT, plot_rows(phases))
        write_json(DIAGNOSTICS, diagnostics)
        write_json(EXAMPLES, {p: r["vqa"]["examples"] for p, r in phases.items() if "vqa" in r})
        write_json(TIMINGS / "evaluate.json", {"seconds": round(time.time() - t0, 1), "machine": machine()})
    log(f"done in {time.time() - t0:.0f}s; " + ", ".join(
        f"{k} {metrics[k]:.3f} ± {metrics.get(k + '_se') or 0:.3f}" for k in SCORES if k in metrics))
