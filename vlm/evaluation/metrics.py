"""The study's scores: the stable score per task and its group means (design.md)."""

from __future__ import annotations


def stable_score(accuracy: float, chance: float) -> float:
    """(accuracy - chance) / (1 - chance): 0 at chance, 1 when perfect (design.md)."""
    return (accuracy - chance) / (1.0 - chance)


def summarise(task_scores: dict[str, dict], vision: list[str], text: list[str]) -> dict:
    """Add the group means `vision_stable`, `text_stable` and their mean `stable_mean`."""
    out = dict(task_scores)

    def group(names: list[str]) -> float | None:
        present = [task_scores[n]["stable"] for n in names if n in task_scores]
        return sum(present) / len(present) if present else None

    out["vision_stable"], out["text_stable"] = group(vision), group(text)
    both = [v for v in (out["vision_stable"], out["text_stable"]) if v is not None]
    out["stable_mean"] = sum(both) / len(both) if both else None
    return out
