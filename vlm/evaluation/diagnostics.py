"""What the answers look like, and plain-words warnings when their form cannot match the ground
truth: a score of 0.0 from answers in the wrong form looks the same as one from a blind model.

Per open-ended task: the most frequent answers, the share outside the ground truth's answers (as
the VQA rule compares them), the share that say yes or no where the task asks yes/no, POPE's yes share, and warnings
for number words against the ground truth's numbers, yes/no tasks answered otherwise, and answers
that are all the same.
"""

from __future__ import annotations

from collections import Counter

from vlm.data.vqa_answers import NUMBERS, normalize_answer, scored_answers
from vlm.evaluation.metrics import pope_parse

NUMBER_WORDS = frozenset(NUMBERS)  # none..ten: the words the VQA rule turns into digits
TOP = 5  # most frequent answers listed
MIN_FORM_SHARE = 0.05  # a form problem is worth a warning from this share of the answers on
MIN_YES_NO_SHARE = 0.5  # on a yes/no task, fewer yes/no answers than this is a warning


def _share(count: int, n: int) -> float:
    return round(count / n, 4) if n else 0.0


def _bare(answer: str) -> str:
    """An answer lower-cased, without surrounding spaces and full stops ("Two." -> "two")."""
    return answer.strip().strip(".!").strip().lower()


def _first_word(answer: str) -> str:
    words = normalize_answer(answer).split()
    return words[0] if words else ""


def _number_warnings(preds: list[str], truths: list[str]) -> list[str]:
    """Answers that are a number word against the ground truth's form of numbers."""
    worded = [p for p in preds if _bare(p) in NUMBER_WORDS]
    if len(worded) < MIN_FORM_SHARE * len(preds):
        return []
    truth_words = {w for t in truths for w in t.lower().split()}
    share = f"{len(worded) / len(preds):.0%} of the answers are number words (e.g. {worded[0]!r})"
    if truth_words & NUMBER_WORDS:
        return [f"{share} and the ground truth writes numbers as words too. The VQA rule turns a predicted "
                "'two' into '2' but leaves agreeing human answers as written, so these answers never "
                "score: write the ground truth's numbers as digits, as VQAv2 does."]
    if any(w.isdigit() for w in truth_words):
        return [f"{share} where the ground truth has digits. The VQA rule maps none..ten to digits, so "
                "these still score, but a larger number in words would not, and other scorers may not map them."]
    return []


def diagnose(kind: str, items: list[dict], preds: list[str]) -> dict:
    """Diagnostics of one open-ended task ("vqa" or "pope") from its items and raw answers."""
    n = len(preds)
    normal = [normalize_answer(p) for p in preds]
    counts = Counter(normal)
    out: dict = {"n": n, "distinct_answers": len(counts),
                 "top_answers": [[a, c] for a, c in sorted(counts.items(), key=lambda ac: (-ac[1], ac[0]))[:TOP]]}
    warnings = []
    if kind == "vqa":
        truths = [a for it in items for a in it["answers"]]
        vocab = {a for it in items for a in scored_answers(it["answers"])}  # as the VQA rule compares them
        outside = sum(a not in vocab for a in normal)
        out["outside_vocabulary"] = _share(outside, n)
        if outside > n / 2:
            warnings.append(f"{outside / n:.0%} of the answers are not among the ground truth's answers "
                            f"(most frequent: {out['top_answers'][0][0]!r}).")
        warnings += _number_warnings(preds, truths)
        yes_no = [i for i, it in enumerate(items) if it.get("answer_type") == "yes/no"]
    else:
        out["yes_share"] = _share(sum(pope_parse(p) == "yes" for p in preds), n)
        yes_no = list(range(n))
    if yes_no:
        said = sum(_first_word(preds[i]) in ("yes", "no") for i in yes_no)
        out["yes_no_share"] = _share(said, len(yes_no))
        if said < MIN_YES_NO_SHARE * len(yes_no):
            others = [preds[i] for i in yes_no if _first_word(preds[i]) not in ("yes", "no")][:3]
            rule = ("POPE's parse counts every answer without 'no' or 'not' as 'yes'" if kind == "pope"
                    else "the VQA rule scores them against yes/no answers")
            warnings.append(f"only {said / len(yes_no):.0%} of the answers to yes/no questions say yes or no "
                            f"(others: {others}); {rule}. Fine-tuning data that asks yes/no questions in "
                            "this form would teach it.")
    if n >= 10 and len(counts) == 1:
        warnings.append(f"every answer is {normal[0]!r}: the model ignores the question and the image.")
    out["warnings"] = warnings
    return out
