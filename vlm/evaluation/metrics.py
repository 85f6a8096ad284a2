"""Scores: the VQAv2 answer normalisation and accuracy, and the study's stable score."""

from __future__ import annotations

import re

NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = {"a", "an", "the"}
# The official evaluation restores apostrophes of common contractions written without them.
CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "isnt": "isn't",
    "shouldnt": "shouldn't", "thats": "that's", "theres": "there's", "wasnt": "wasn't", "werent": "weren't",
    "whats": "what's", "wont": "won't", "wouldnt": "wouldn't", "youre": "you're", "im": "i'm",
}
PUNCTUATION = set(";/[]\"{}()=+\\_-><@`,?!*#%^&$")
_PERIOD = re.compile(r"\.(?!\d)")  # a full stop, not a decimal point (as the official script)
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalize_answer(answer: str) -> str:
    """The VQAv2 normalisation: case, whitespace, punctuation, number words, articles, contractions."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _COMMA_NUMBER.sub(r"\1\3", text)
    for p in PUNCTUATION:
        text = text.replace(p, " ")
    text = _PERIOD.sub("", text)
    words = []
    for word in text.split():
        word = NUMBERS.get(word, word)
        if word in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """min(#annotators who gave the (normalised) prediction / 3, 1)."""
    pred = normalize_answer(prediction)
    return min(sum(normalize_answer(a) == pred for a in answers) / 3.0, 1.0)


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
