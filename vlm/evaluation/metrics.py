"""The study's scores from the model's answers: per-task accuracy with its standard error, POPE as
its authors score it, the stable score per task and its group means (design.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from vlm.data.vqa_answers import vqa_accuracy


def mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and its standard error, sample std (ddof 1) / sqrt(n); no error from one value."""
    n = len(values)
    if n == 0:
        raise ValueError("no items to score")
    mean = sum(values) / n
    if n == 1:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def accuracy(values: Sequence[float]) -> dict:
    mean, se = mean_se(values)
    return {"accuracy": mean, "accuracy_se": se, "n": len(values)}


def vqa_scores(items: list[dict], preds: list[str]) -> dict:
    """VQAv2 accuracy over the questions and per answer type (yes/no, number, other), as the
    official script reports it; `examples`: the first three (question, answer, multiple-choice answer)."""
    per_item = [vqa_accuracy(p, it["answers"]) for it, p in zip(items, preds, strict=True)]
    by_type: dict[str, list[float]] = {}
    for it, score in zip(items, per_item, strict=True):
        by_type.setdefault(it["answer_type"], []).append(score)
    examples = [(it["question"], p, it["multiple_choice_answer"]) for it, p in zip(items[:3], preds, strict=False)]
    return {**accuracy(per_item), "by_type": {t: accuracy(s) for t, s in sorted(by_type.items())},
            "examples": examples}


def pope_parse(answer: str) -> str:
    """POPE's reading of a free answer (its evaluation script, and LLaVA's eval_pope.py): keep the
    text before the first full stop, drop commas, split on spaces; an answer with the word "no",
    "not" or "No" is "no", every other answer, an empty one included, is "yes"."""
    words = answer.split(".")[0].replace(",", "").split(" ")
    return "no" if {"no", "not", "No"} & set(words) else "yes"


def pope_scores(items: list[dict], preds: list[str]) -> dict:
    """POPE's accuracy, precision, recall and F1 of "yes" (the positive class) and the share of
    "yes" answers. Precision is 0 when no answer is "yes" (the script would divide by zero)."""
    said = [pope_parse(p) for p in preds]
    truth = [it["label"] for it in items]
    tp = sum(s == t == "yes" for s, t in zip(said, truth, strict=True))
    said_yes, is_yes = said.count("yes"), truth.count("yes")
    precision = tp / said_yes if said_yes else 0.0
    recall = tp / is_yes if is_yes else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {**accuracy([float(s == t) for s, t in zip(said, truth, strict=True)]),
            "precision": precision, "recall": recall, "f1": f1, "yes_ratio": said_yes / len(said)}


def mc_scores(items: list[dict], choices: list[int]) -> dict:
    return accuracy([float(c == it["answer"]) for it, c in zip(items, choices, strict=True)])


def stable_score(accuracy: float, chance: float) -> float:
    """(accuracy - chance) / (1 - chance): 0 at chance, 1 when perfect (design.md)."""
    return (accuracy - chance) / (1.0 - chance)


def with_stable(result: dict, chance: float) -> dict:
    """A task's scores plus its chance level, stable score and the stable score's standard error."""
    se = result["accuracy_se"]
    return {**result, "chance": chance, "stable": stable_score(result["accuracy"], chance),
            "stable_se": None if se is None else se / (1.0 - chance)}


def summarise(task_scores: dict[str, dict], vision: list[str], text: list[str]) -> dict:
    """Add the group means `vision_stable`, `text_stable` and their mean `stable_mean`, each with a
    standard error (`*_se`) that treats the tasks as independent samples."""
    out = dict(task_scores)

    def group(means: list[float], ses: list[float | None]) -> tuple[float | None, float | None]:
        if not means:
            return None, None
        se = None if None in ses else math.sqrt(sum(s * s for s in ses)) / len(ses)
        return sum(means) / len(means), se

    for name, names in (("vision_stable", vision), ("text_stable", text)):
        present = [task_scores[n] for n in names if n in task_scores]
        out[name], out[f"{name}_se"] = group([t["stable"] for t in present], [t.get("stable_se") for t in present])
    groups = [g for g in ("vision_stable", "text_stable") if out[g] is not None]
    out["stable_mean"], out["stable_mean_se"] = group([out[g] for g in groups], [out[f"{g}_se"] for g in groups])
    return out
