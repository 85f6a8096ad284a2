"""VQAv2 answer normalisation and accuracy, POPE's parse and scores, standard errors, stable scores
and their group means, the stratified subset of `evaluate.max_samples`, and the answer diagnostics."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vlm.data.vqa_answers import normalize_answer, vqa_accuracy
from vlm.evaluation.diagnostics import diagnose
from vlm.evaluation.metrics import mean_se, pope_parse, pope_scores, stable_score, summarise, vqa_scores, with_stable
from vlm.evaluation.sampling import subsample


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


def test_summarise_standard_errors_of_groups():
    scores = {"vqa": {"stable": 0.4, "stable_se": 0.03}, "pope": {"stable": 0.6, "stable_se": 0.04},
              "arc": {"stable": 0.2, "stable_se": 0.05}}
    out = summarise(scores, ["vqa", "pope"], ["arc"])
    assert out["vision_stable_se"] == pytest.approx(0.025)  # sqrt(0.03^2 + 0.04^2) / 2 = 0.05 / 2
    assert out["text_stable_se"] == pytest.approx(0.05)
    assert out["stable_mean_se"] == pytest.approx(np.hypot(0.025, 0.05) / 2)
    one = summarise({"vqa": {"stable": 0.4, "stable_se": None}}, ["vqa"], [])
    assert one["vision_stable_se"] is None and one["text_stable_se"] is None


def test_mean_se_by_hand():
    assert mean_se([1, 0, 1, 0]) == (0.5, pytest.approx(np.sqrt((4 * 0.25 / 3) / 4)))  # sample var 1/3
    assert mean_se([0.7]) == (0.7, None)
    with pytest.raises(ValueError, match="no items"):
        mean_se([])


def test_with_stable_scales_the_error_by_the_chance_gap():
    r = with_stable({"accuracy": 0.75, "accuracy_se": 0.02}, 0.5)
    assert r["stable"] == pytest.approx(0.5) and r["stable_se"] == pytest.approx(0.04) and r["chance"] == 0.5


# POPE's evaluation script (and LLaVA's eval_pope.py): the text before the first full stop, commas
# dropped, split on single spaces; "no", "not" or "No" among the words makes it "no".
@pytest.mark.parametrize(("answer", "parsed"), [
    ("No, there is not.", "no"),  # "No there is not": "No"
    ("There is a dog.", "yes"),  # no negation: yes
    ("yes", "yes"),
    ("Not sure", "yes"),  # "Not" with a capital is not in the script's list
    ("", "yes"),  # an empty answer counts as yes
    ("no", "no"),
    ("Yes. No.", "yes"),  # only the first sentence counts
    ("yes, but not red", "no"),
    ("nope", "yes"),
    ("NO", "yes"),  # the script looks for "no", "not" and "No" only
    ("2", "yes"),  # a digit: yes, as the digits of the handwriting run would be read
])
def test_pope_parse(answer, parsed):
    assert pope_parse(answer) == parsed


def test_pope_scores_by_hand():
    labels = ["yes", "yes", "yes", "no", "no", "no", "no", "no"]
    preds = ["yes", "yes", "no", "yes", "no", "no", "no", "no"]
    r = pope_scores([{"label": lab} for lab in labels], preds)
    # TP 2, FN 1, FP 1, TN 4: accuracy 6/8, precision 2/3, recall 2/3, F1 2/3, yes ratio 3/8
    assert r["accuracy"] == pytest.approx(0.75) and r["n"] == 8
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3) and r["yes_ratio"] == pytest.approx(3 / 8)
    none_yes = pope_scores([{"label": "yes"}, {"label": "no"}], ["no", "no"])
    assert none_yes["precision"] == 0.0 and none_yes["recall"] == 0.0 and none_yes["f1"] == 0.0
    assert none_yes["accuracy"] == 0.5 and none_yes["yes_ratio"] == 0.0


def vqa_item(answer_type: str, answer: str, question: str = "q?") -> dict:
    return {"question": question, "answers": [answer] * 10, "answer_type": answer_type,
            "multiple_choice_answer": answer}


def test_vqa_scores_per_answer_type():
    items = [vqa_item("yes/no", "yes"), vqa_item("yes/no", "no"), vqa_item("number", "2"),
             vqa_item("other", "red"), vqa_item("other", "blue"), vqa_item("other", "green")]
    r = vqa_scores(items, ["yes", "yes", "two", "red", "red", "green"])
    assert r["accuracy"] == pytest.approx(4 / 6) and r["n"] == 6
    assert r["by_type"]["yes/no"]["accuracy"] == pytest.approx(0.5) and r["by_type"]["yes/no"]["n"] == 2
    assert r["by_type"]["number"]["accuracy"] == 1.0 and r["by_type"]["number"]["accuracy_se"] is None
    assert r["by_type"]["other"]["accuracy"] == pytest.approx(2 / 3)
    assert list(r["by_type"]) == ["number", "other", "yes/no"]


# ---------------------------------------------------------------- evaluate.max_samples


def typed_items(counts: dict[str, int]) -> list[dict]:
    return [{"id": i, "answer_type": t} for i, t in enumerate(t for t, n in counts.items() for _ in range(n))]


def test_subsample_keeps_each_strata_share_and_the_order():
    items = typed_items({"other": 600, "number": 300, "yes/no": 100})
    items = [items[i] for i in np.random.default_rng(0).permutation(len(items))]  # types interleaved
    sub = subsample(items, 100, 0, "vqa", lambda it: it["answer_type"])
    assert Counter(it["answer_type"] for it in sub) == {"other": 60, "number": 30, "yes/no": 10}
    positions = [items.index(it) for it in sub]
    assert positions == sorted(positions) and len(set(positions)) == 100  # original order, no repeats
    assert sub == subsample(items, 100, 0, "vqa", lambda it: it["answer_type"])  # the same seed draws the same
    assert sub != subsample(items, 100, 1, "vqa", lambda it: it["answer_type"])
    assert sub != subsample(items, 100, 0, "pope", lambda it: it["answer_type"])  # each task its own draw


def test_subsample_rounds_by_largest_remainder_then_name():
    items = typed_items({"a": 1, "b": 1, "c": 1})
    assert [it["answer_type"] for it in subsample(items, 2, 0, "t", lambda it: it["answer_type"])] == ["a", "b"]
    items = typed_items({"a": 5, "b": 3, "c": 2})  # n 5: quotas 2.5, 1.5, 1.0 -> 2, 1, 1, then a (.5, name a)
    assert Counter(it["answer_type"] for it in subsample(items, 5, 3, "t", lambda it: it["answer_type"])) == {
        "a": 3, "b": 1, "c": 1}


@pytest.mark.parametrize("n", [0, 10, 11])
def test_subsample_zero_or_enough_keeps_everything(n):
    items = typed_items({"a": 10})
    assert subsample(items, n, 0, "t", lambda it: it["answer_type"]) == items


# ---------------------------------------------------------------- answer diagnostics


def test_diagnose_number_words_against_number_words_in_the_ground_truth():
    items = [vqa_item("number", w) for w in ("two", "three", "one", "two")]
    d = diagnose("vqa", items, ["two", "two", "one", "three"])
    assert vqa_scores(items, ["two", "two", "one", "three"])["accuracy"] == 0.0  # why the warning matters
    assert len(d["warnings"]) == 2  # outside the vocabulary, and number words
    assert "never score" in d["warnings"][1] and "100% of the answers are number words" in d["warnings"][1]
    assert d["outside_vocabulary"] == 1.0 and d["top_answers"][0] == ["2", 2]


def test_diagnose_number_words_against_digits_and_a_clean_run():
    items = [vqa_item("number", d) for d in ("2", "3", "1", "2")]
    (warning,) = diagnose("vqa", items, ["two", "three", "1", "2"])["warnings"]
    assert "where the ground truth has digits" in warning
    clean = diagnose("vqa", items, ["2", "3", "1", "1"])
    assert clean["warnings"] == [] and clean["outside_vocabulary"] == 0.0 and clean["distinct_answers"] == 3


def test_diagnose_yes_no_task_answered_otherwise():
    items = [{"label": "yes" if i % 2 else "no", "text": "is there a two?"} for i in range(10)]
    preds = ["2", "9", "2", "7", "yes", "2", "3", "no", "2", "1"]
    d = diagnose("pope", items, preds)
    assert d["yes_no_share"] == 0.2 and d["yes_share"] == 0.9  # "no" is the only no
    (warning,) = d["warnings"]
    assert "only 20% of the answers to yes/no questions say yes or no" in warning and "'2'" in warning


def test_diagnose_all_answers_identical():
    items = [vqa_item("other", c) for c in ("red", "blue") * 6]
    d = diagnose("vqa", items, ["red"] * 12)
    assert d["warnings"] == ["every answer is 'red': the model ignores the question and the image."]
    assert d["distinct_answers"] == 1 and d["top_answers"] == [["red", 12]]
