"""VQAv2 answer normalisation and accuracy, stable scores and their group means."""

from __future__ import annotations

import pytest

from vlm.data.vqa_answers import normalize_answer, vqa_accuracy
from vlm.evaluation.metrics import stable_score, summarise


def ten(matching: str, n: int, other: str = "blue") -> list[str]:
    return [matching] * n + [other] * (10 - n)


# (answer, what the official script makes of it), each worked by hand from its rules
@pytest.mark.parametrize(("answer", "expected"), [
    ("Two", "2"),
    ("none", "0"),
    ("zero", "0"),
    ("eleven", "eleven"),  # only none..ten are number words
    ("ten apples", "10 apples"),
    ("a red circle.", "red circle"),
    ("The Square", "square"),
    ("An Apple", "apple"),  # lower-cased before the articles go
    ("a cat and a dog", "cat and dog"),
    ("isnt", "isn't"),
    ("dont know", "don't know"),
    ("isn't", "isn't"),
    ("Im fine", "im fine"),  # the table's key is "Im": never matches a lower-cased word
    ("somebody'd", "somebodyd"),  # the table maps this one the wrong way round
    ("dog's", "dog's"),  # the apostrophe is no punctuation
    ("10:30", "10:30"),  # nor is the colon
    ("yes!", "yes"),
    ("what?", "what"),
    ("yes.", "yes"),  # a full stop at a word's end
    ("e.g.", "eg"),
    ("red, blue?", "red blue"),  # ", " in the text: commas removed; "?" touches no space: a space
    ("cat,dog", "cat dog"),  # no mark next to a space: the comma becomes a space
    ("hello ,world", "hello world"),
    ("left/right", "left right"),
    ("1/2", "1 2"),
    ("left - right", "left right"),
    ("left-right", "left right"),
    ("(circle)", "circle"),
    ("(2)", "2"),
    ("3.5", "3.5"),  # a full stop before a digit stays
    ("3.5.", "3.5"),
    ("1,000", "1000"),  # a comma inside a number: every mark is removed, not spaced
    ("1,000 cats/dogs", "1000 catsdogs"),
    ("  Red \t circle\n", "red circle"),
    ("red   car", "red car"),
    ("", ""),
])
def test_normalize_answer(answer, expected):
    assert normalize_answer(answer) == expected


def test_at_most_32_full_stops_are_removed():
    """The script passes re.UNICODE (32) where `sub` takes its count."""
    assert normalize_answer("." * 33) == "."
    assert normalize_answer("." * 32) == ""


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


# Leave-one-out over ten annotators: with n matching, n subsets have n - 1 matches and 10 - n have n.
@pytest.mark.parametrize(("n", "expected"), [
    (0, 0.0),
    (1, 0.3),  # (1 x 0 + 9 x 1/3) / 10
    (2, 0.6),  # (2 x 1/3 + 8 x 2/3) / 10
    (3, 0.9),  # (3 x 2/3 + 7 x 1) / 10
    (4, 1.0),  # every subset keeps at least 3
    (10, 1.0),
])
def test_vqa_accuracy_is_the_mean_over_leave_one_out_subsets(n, expected):
    assert vqa_accuracy("red", ten("red", n)) == pytest.approx(expected)


@pytest.mark.parametrize(("prediction", "humans", "expected"), [
    ("yes", ["yes"] * 10, 1.0),
    ("Yes", ["yes"] * 10, 1.0),  # the prediction is always normalised
    ("yes", ["Yes"] * 10, 0.0),  # humans who agree are not: "Yes" != "yes"
    ("two", ["two"] * 10, 0.0),  # "two" -> "2", the humans' "two" stays
    ("two", ["2"] * 10, 1.0),
    ("the dog", ["the dog"] * 10, 0.0),  # "dog" against an untouched "the dog"
    ("dog", ["the dog"] * 5 + ["dog"] * 5, 1.0),  # disagreeing humans lose punctuation only, not articles
    ("yes", ["yes."] * 3 + ["no"] * 7, 0.9),  # ...but they do lose punctuation
    ("yes", ["yes!"] * 3 + ["no"] * 7, 0.0),  # a human "yes!" becomes "yes " and is never stripped
    ("two", ["2"] * 2 + ["two"] * 8, 0.6),  # and keep their number words
    ("dont know", ["don't know"] * 3 + ["no"] * 7, 0.9),
    ("Two.", ten("2", 1), 0.3),
    ("a Red circle", ["red circle!", "Red Circle", "the red circle"] + ["no"] * 7, 0.0),  # none is "red circle"
    ("a Red circle", ["red circle."] * 2 + ["Red Circle"] + ["no"] * 7, 0.6),
    ("red", ten("reddish", 10), 0.0),
])
def test_vqa_accuracy_normalises_humans_only_when_they_disagree(prediction, humans, expected):
    assert vqa_accuracy(prediction, humans) == pytest.approx(expected)


def test_vqa_accuracy_needs_human_answers():
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("yes", [])


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
