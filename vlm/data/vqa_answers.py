"""What makes a VQA answer right: the official VQAv2 answer normalisation and accuracy.

It lives with the data because both sides need it: `prepare` computes a user set's chance level
with it (an answer-blind guesser's accuracy, vlm/data/ingest.py) and `evaluate` scores with it.
"""

from __future__ import annotations

import re
from collections import Counter

# The official VQA evaluation (GT-Vision-Lab's vqaEval.py), rebuilt from its documented behaviour,
# quirks included, so our VQA numbers mean what published VQAv2 numbers mean.
NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = {"a", "an", "the"}
# Apostrophes restored in contractions written without them. The official table also has keys with
# a capital I ("Im", "Ive", "Id've", "I'dve"), which never match because words are lower-cased
# first, and maps "somebody'd" *to* "somebodyd"; both kept as they are.
_CONTRACTION_PAIRS = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've something'dve=something'd've
somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've
therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've
werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd
wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
"""
CONTRACTIONS = dict(pair.split("=", 1) for pair in _CONTRACTION_PAIRS.split())
# Replaced by a space, or removed when the answer has the mark next to a space or a comma inside a
# number; the apostrophe, colon, asterisk and the like are no punctuation to the script.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The script's pattern is (?!<=\d)(\.)(?!\d): its first group is a look-*ahead* for the text "<="
# plus a digit (a mistyped look-behind), true at any full stop, so: a full stop not before a digit.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")
# The script passes re.UNICODE as the third argument of `sub`, which is the count: at most 32 full
# stops are removed.
_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """The script's punctuation step. Whether a mark is removed or becomes a space is decided on the
    *original* text, mark by mark; then full stops that do not precede a digit go (32 at most)."""
    out = text
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or _COMMA_NUMBER.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lower-case, number words to digits, articles dropped, contractions given their apostrophes."""
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """A model answer as the script normalises it: whitespace, punctuation, then digits and articles."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def scored_answers(answers: list[str]) -> list[str]:
    """The human answers as the script compares them: as written when they agree, else with
    punctuation processed (never digits, articles or case)."""
    return [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """The VQAv2 accuracy of one answer against its (ten) human answers.

    The mean, over leaving each human answer out, of min(#other humans who gave the answer / 3, 1).
    As in the script, the human answers are normalised only when they disagree, and then only for
    punctuation (no digits, articles or case): a lone "Two" among ten identical "Two"s matches nothing.
    """
    pred = normalize_answer(prediction)
    humans = scored_answers(answers)
    if not humans:
        raise ValueError("a VQA question needs at least one human answer")
    scores = [min(sum(h == pred for h in humans[:i] + humans[i + 1:]) / 3.0, 1.0) for i in range(len(humans))]
    return sum(scores) / len(scores)


def answer_prior_accuracy(items: list[dict]) -> float:
    """VQA's chance level for a user's evaluation set: the official accuracy of an answer-blind
    guesser that gives every question the most frequent `multiple_choice_answer` of its
    `answer_type` (yes/no, number, other) in this set (ties: the alphabetically first)."""
    by_type: dict[str, Counter] = {}
    for item in items:
        by_type.setdefault(item["answer_type"], Counter())[item["multiple_choice_answer"]] += 1
    guess = {t: min(c, key=lambda a: (-c[a], a)) for t, c in by_type.items()}
    return sum(vqa_accuracy(guess[it["answer_type"]], it["answers"]) for it in items) / len(items)
