"""VQAv2 answer normalisation and accuracy, stable scores and their group means."""

from __future__ import annotations

import pytest

from vlm.evaluation.metrics import normalize_answer, stable_score, summarise, vqa_accuracy


def ten(matching: str, n: int, other: str = "blue") -> list[str]:
    return [matching] * n + [other] * (10 - n)


@pytest.mark.parametrize(("answer", "expected"), [
    ("Two", "2"),
    ("none", "0"),
    ("ten apples", "10 apples"),
    ("a red circle.", "red circle"),
    ("The Square", "square"),
    ("an apple", "apple"),
    ("isnt", "isn't"),
    ("dont know", "don't know"),
    ("isn't", "isn't"),
    ("yes!", "yes"),
    ("red, blue?", "red blue"),
    ("left/right", "left right"),
    ("(circle)", "circle"),
    ("3.5", "3.5"),
    ("1,000", "1000"),
    ("  Red \t circle\n", "red circle"),
    ("", ""),
])
def test_normalize_answer(answer, expected):
    assert normalize_answer(answer) == expected


@pytest.mark.parametrize(("answer", "expected"), [("2.", "2"), ("It is 10.", "it is 10"), ("Two.", "2")])
def test_full_stop_after_a_number_is_removed(answer, expected):
    """A full stop is not a decimal point even after a digit: the official VQA periodStrip only checks
    that no digit follows, so "2." scores as "2"."""
    assert normalize_answer(answer) == expected
    assert vqa_accuracy(answer, ten(expected, 10)) == 1.0


def test_normalize_answer_is_idempotent():
    for answer in ["A red circle.", "Two!", "isnt it", "1,000 stars"]:
        once = normalize_answer(answer)
        assert normalize_answer(once) == once


@pytest.mark.parametrize(("n", "expected"), [(0, 0.0), (1, 1 / 3), (2, 2 / 3), (3, 1.0), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_counts_matching_annotators(n, expected):
    assert vqa_accuracy("red", ten("red", n)) == pytest.approx(expected)


def test_vqa_accuracy_compares_normalised_answers():
    assert vqa_accuracy("Two.", ten("2", 1)) == pytest.approx(1 / 3)
    assert vqa_accuracy("a Red circle", ["red circle!", "Red Circle", "the red circle"] + ["no"] * 7) == 1.0
    assert vqa_accuracy("2", ten("two", 3)) == 1.0
    assert vqa_accuracy("red", ten("reddish", 10)) == 0.0


@pytest.mark.parametrize("chance", [0.0, 0.25, 0.5])
def test_stable_score(chance):
    assert stable_score(chance, chance) == 0.0
    assert stable_score(1.0, chance) == pytest.approx(1.0)
    assert stable_score(chance + (1 - chance) / 2, chance) == pytest.approx(0.5)
    if chance > 0:
        assert stable_score(0.0, chance) < 0


def test_stable_score_examples():
    assert stable_score(0.75, 0.5) == pytest.approx(0.5)
    assert stable_score(0.4, 0.25) == pytest.approx(0.2)


def test_summarise_group_means():
    scores = {
        "vqa": {"accuracy": 0.6, "stable": 0.4},
        "pope": {"accuracy": 0.8, "stable": 0.6},
        "arc": {"accuracy": 0.5, "stable": 0.2},
    }
    out = summarise(scores, ["vqa", "pope"], ["arc"])
    assert out["vision_stable"] == pytest.approx(0.5)
    assert out["text_stable"] == pytest.approx(0.2)
    assert out["stable_mean"] == pytest.approx(0.35)
    assert {k: out[k] for k in scores} == scores
    assert set(scores) == {"vqa", "pope", "arc"}  # the input is not changed


def test_summarise_mean_of_groups_not_of_tasks():
    scores = {"a": {"stable": 1.0}, "b": {"stable": 1.0}, "c": {"stable": 1.0}, "t": {"stable": 0.0}}
    out = summarise(scores, ["a", "b", "c"], ["t"])
    assert out["stable_mean"] == pytest.approx(0.5)  # not 0.75, the mean over the four tasks


def test_summarise_missing_tasks_and_groups():
    out = summarise({"vqa": {"stable": 0.3}}, ["vqa", "pope"], ["arc"])
    assert out["vision_stable"] == pytest.approx(0.3)
    assert out["text_stable"] is None
    assert out["stable_mean"] == pytest.approx(0.3)
    empty = summarise({}, ["vqa"], ["arc"])
    assert empty["vision_stable"] is None and empty["text_stable"] is None and empty["stable_mean"] is None
