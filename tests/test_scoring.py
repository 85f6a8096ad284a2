"""Evaluation scoring: greedy decoding, left-padded batches, option log-likelihoods, POPE parsing and
the blank-image control, with tiny real models (nothing downloaded) and scripted fakes."""

from __future__ import annotations

import copy
import functools
from itertools import product

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlm.data.batches import GREY, Collator
from vlm.data.tokenizer import IMAGE_MARK, Codec, train_tokenizer
from vlm.evaluation import scoring
from vlm.evaluation.scoring import (
    MC_PROMPT,
    caption_logprobs,
    choose_captions,
    generate,
    left_pad,
    option_logprobs,
    score_mc,
    score_pope,
    score_vqa,
)
from vlm.model.lm import LM, KVCache, lm_config
from vlm.model.vision import build_clip, image_tensor, preprocess_config, tiny_clip_config
from vlm.model.vlm import VLM, build_vlm

VOCAB, IMAGE_SIZE, PATCH = 300, 16, 8  # 2x2 patches: 4 image tokens per image
QUESTIONS = [  # clearly different token lengths
    "what colour?",
    "how many shapes are there in the picture?",
    "is there a big red circle at the top left of the picture, near the bottom in the middle?",
]


def sentences() -> list[str]:
    colours = ["red", "green", "blue", "yellow"]
    shapes = ["circle", "square", "triangle", "cross"]
    places = ["at the top left", "on the right", "near the bottom", "in the middle"]
    counts = ["one", "two", "three"]
    text = [f"there are {n} {c} {s}s {p}." for c, s, p, n in product(colours, shapes, places, counts)]
    return text + ["question: what does the blorp eat? answer: honey.", "is there a shape? yes. no."]


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec(train_tokenizer(sentences(), VOCAB, show_progress=False))


def tiny_lm_config(codec: Codec):
    return lm_config("tiny", vocab_size=codec.vocab_size, max_seq_len=128, n_layer=2, d_model=64, n_head=2,
                     d_head=32)


@pytest.fixture(scope="module")
def vlm(codec: Codec) -> VLM:
    torch.manual_seed(0)
    cfg = tiny_clip_config(image_size=IMAGE_SIZE, patch_size=PATCH, width=32, layers=2, heads=2, embed_dim=32,
                           vocab_size=codec.vocab_size, context_length=12, pad_id=codec.ids["pad"],
                           eos_id=codec.ids["eos"])
    clip = build_clip(cfg)
    # As load_clip does for a saved encoder: the preprocess config travels with the visual tower.
    open_clip.set_model_preprocess_cfg(clip, preprocess_config(IMAGE_SIZE))
    model = build_vlm(tiny_lm_config(codec), clip, codec.ids["image"], freeze_encoder=True).eval()
    assert model.num_image_tokens == 4
    return model


@pytest.fixture(scope="module")
def lm(codec: Codec) -> LM:
    torch.manual_seed(1)
    return LM(tiny_lm_config(codec)).eval()


def collator(codec: Codec, num_image_tokens: int, blank: bool = False) -> Collator:
    to_tensor = functools.partial(image_tensor, preprocess_cfg=preprocess_config(IMAGE_SIZE))
    return Collator(codec.ids, num_image_tokens, to_tensor, blank_images=blank)


def solid(rgb: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), rgb)


def noisy(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@torch.no_grad()
def last_logits(model, collate: Collator, codec: Codec, questions: list[str], images: list[Image.Image]):
    """The logits `generate` takes its first token from: the prompts built, padded and masked as it does."""
    prompts = [np.array(codec.prompt(f"{IMAGE_MARK}\n{q}")) for q in questions]
    ids, mask = left_pad([collate.expand(p, np.zeros_like(p))[0] for p in prompts], codec.ids["pad"])
    return model(ids, images=collate.pixels(images), pad_mask=mask)[:, -1]


# ---------------------------------------------------------------- greedy decoding with a scripted model


class Scripted(nn.Module):
    """A fake VLM whose argmax at step s of row b is `scripts[b][s]` (the last entry repeats).

    It checks what `generate` feeds it: without a cache the whole sequence at every step, with one
    the prompt (and the images) once and then only the newest token, the pad mask always covering
    every position so far."""

    def __init__(self, vocab_size: int, eos: int, scripts: list[list[int]]):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.vocab_size, self.eos, self.scripts = vocab_size, eos, scripts
        self.inputs: list[torch.Tensor] = []  # the whole sequence the model has seen at each call

    def token(self, b: int, step: int) -> int:
        script = self.scripts[b]
        return script[min(step, len(script) - 1)]

    def forward(self, ids, images=None, pad_mask=None, cache=None):
        step = len(self.inputs)
        cached_step = cache is not None and step > 0
        full = torch.cat([self.inputs[-1], ids], dim=1) if cached_step else ids
        assert ids.shape[1] == (1 if cached_step else full.shape[1])
        assert pad_mask is not None and pad_mask.shape == full.shape
        if cached_step:
            assert images is None  # the image went in with the prompt
        else:
            assert images is not None and images.shape[0] == ids.shape[0] == len(self.scripts)
        if step:  # each call sees the previous ids plus the token chosen last time (eos once a row is done)
            assert torch.equal(full[:, :-1], self.inputs[-1])
            fed = [self.eos if self.eos in self.scripts[b][: step - 1] else self.token(b, step - 1)
                   for b in range(len(self.scripts))]
            assert full[:, -1].tolist() == fed
            assert pad_mask[:, -1].all()
        self.inputs.append(full.clone())
        logits = torch.zeros(ids.shape[0], ids.shape[1], self.vocab_size)
        for b in range(len(self.scripts)):
            logits[b, -1, self.token(b, step)] = 1.0
        return logits


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_stops_at_eos_and_drops_what_follows(codec, use_cache):
    eos = codec.ids["eos"]
    first, second = codec.encode("red circle"), codec.encode("two")
    trailing = codec.encode(" blue square")
    assert len(first) > len(second) >= 1
    model = Scripted(codec.vocab_size, codec.ids["eos"], [first + [eos] + trailing, second + [eos] + trailing])
    answers = generate(model, collator(codec, 4), codec, ["what is it?", "how many?"],
                       [solid((255, 0, 0)), solid((0, 0, 255))], max_new_tokens=20, use_cache=use_cache)
    assert answers == [codec.decode(first), codec.decode(second)] == ["red circle", "two"]
    # One call per token of the longer answer plus the call that produced its eos; nothing after.
    assert len(model.inputs) == len(first) + 1


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_an_immediate_eos_is_an_empty_answer(codec, use_cache):
    model = Scripted(codec.vocab_size, codec.ids["eos"], [[codec.ids["eos"], *codec.encode("red")]])
    answers = generate(model, collator(codec, 4), codec, ["what?"], [solid((255, 0, 0))], max_new_tokens=5,
                       use_cache=use_cache)
    assert answers == [""] and len(model.inputs) == 1


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_stops_after_max_new_tokens_without_eos(codec, use_cache):
    script = codec.encode("red blue green circle square")
    assert len(script) >= 4 and codec.ids["eos"] not in script
    model = Scripted(codec.vocab_size, codec.ids["eos"], [script])
    answers = generate(model, collator(codec, 4), codec, ["what?"], [solid((255, 0, 0))], max_new_tokens=3,
                       use_cache=use_cache)
    assert answers == [codec.decode(script[:3])]
    assert len(codec.decode(script[:3])) < len(codec.decode(script[:4]))  # a 4th token would show
    assert len(model.inputs) == 3


# ---------------------------------------------------------------- left padding with a real tiny VLM


def test_batched_answers_equal_one_at_a_time(codec, vlm):
    lengths = [len(codec.prompt(f"{IMAGE_MARK}\n{q}")) for q in QUESTIONS]
    assert lengths[0] + 5 < lengths[1] and lengths[1] + 5 < lengths[2]
    collate = collator(codec, vlm.num_image_tokens)
    images = [noisy(0), solid((220, 50, 40)), noisy(2)]
    batched = generate(vlm, collate, codec, QUESTIONS, images, max_new_tokens=6)
    alone = [generate(vlm, collate, codec, [q], [im], max_new_tokens=6)[0]
             for q, im in zip(QUESTIONS, images, strict=True)]
    assert batched == alone
    assert any(batched), "the tiny model should say something (a test of empty strings proves little)"

    logits = last_logits(vlm, collate, codec, QUESTIONS, images)
    for i, (q, im) in enumerate(zip(QUESTIONS, images, strict=True)):
        torch.testing.assert_close(logits[i], last_logits(vlm, collate, codec, [q], [im])[0], rtol=0, atol=1e-5)
    # The rows really differ, so matching them is not trivial.
    assert (logits[0] - logits[1]).abs().amax() > 1e-3 and (logits[1] - logits[2]).abs().amax() > 1e-3


# ---------------------------------------------------------------- option log-likelihoods


def test_option_logprobs_equal_the_hand_computed_sums(codec, lm):
    prompt = MC_PROMPT.format(stem="what does the blorp eat?")
    options = ["honey", "a big blue triangle at the top", "two"]
    context = [codec.ids["bos"], *codec.encode(prompt)]
    conts = [codec.encode(" " + o) for o in options]
    assert len({len(c) for c in conts}) == len(conts)
    expected = []
    with torch.no_grad():
        for cont in conts:
            seq = torch.tensor([context + cont])
            logp = F.log_softmax(lm(seq)[0].float(), dim=-1)
            # token at position t is predicted by position t - 1
            expected.append(sum(float(logp[t - 1, seq[0, t]]) for t in range(len(context), seq.shape[1])))
    got = option_logprobs(lm, codec, prompt, options)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert max(expected) - min(expected) > 1e-2  # the options are told apart

    best = int(np.argmax(expected))
    item = {"stem": "what does the blorp eat?", "choices": options}
    assert score_mc(lm, codec, [{**item, "answer": best}])["accuracy"] == 1.0
    assert score_mc(lm, codec, [{**item, "answer": (best + 1) % 3}])["accuracy"] == 0.0


def test_caption_logprobs_in_one_padded_batch_equal_the_hand_computed_sums(codec, vlm):
    """Caption-form multiple choice: rows of different lengths (stems, options) and images in one
    left-padded batch score what the sums of log-probabilities, computed one unpadded row at a time
    after `[bos] <image> stem`, are; the choice is the best of them."""
    collate = collator(codec, vlm.num_image_tokens)
    items = [{"stem": "a big", "choices": ["purple circle", "pink circle"]},
             {"stem": "an image of a small", "choices": ["pink cross in the top left", "purple cross"]},
             {"stem": "there is a", "choices": ["red", "big green square", "two"]}]
    images = [noisy(0), solid((150, 60, 210)), noisy(3)]
    expected, margins, sums_of = [], [], []
    with torch.no_grad():
        for it, image in zip(items, images, strict=True):
            start = np.array([codec.ids["bos"], codec.ids["image"], *codec.encode(it["stem"])])
            base = list(collate.expand(start, np.zeros_like(start))[0])
            sums = []
            for option in it["choices"]:
                seq = torch.tensor([base + codec.encode(" " + option)])
                logp = F.log_softmax(vlm(seq, images=collate.pixels([image]))[0].float(), dim=-1)
                sums.append(sum(float(logp[t - 1, seq[0, t]]) for t in range(len(base), seq.shape[1])))
            sums_of.append(sums)
            expected.append(int(np.argmax(sums)))
            margins.append(sorted(sums)[-1] - sorted(sums)[-2])
    assert min(margins) > 1e-3  # a tie would make the comparison trivial
    got = caption_logprobs(vlm, collate, codec, items, images)
    for g, want in zip(got, sums_of, strict=True):
        np.testing.assert_allclose(g, want, rtol=0, atol=1e-4)
    preds = choose_captions(vlm, collate, codec, [{**it, "image": i} for i, it in enumerate(items)], images.__getitem__,
                            batch_size=2)
    assert [preds[i] for i in range(3)] == expected  # two batches, the second of one item


def test_left_pad():
    ids, mask = left_pad([np.array([5, 6, 7]), np.array([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]


# ---------------------------------------------------------------- POPE answers


def test_score_pope_reads_answers_by_popes_parse_in_batches(monkeypatch):
    preds = ["No, there is not.", "There is a dog.", "yes", "Not sure", "", "no"]
    labels = ["no", "no", "yes", "no", "yes", "yes"]
    questions = [f"is there a red circle number {i}?" for i in range(len(preds))]
    answer_of = dict(zip(questions, preds, strict=True))
    calls = []

    def fake_generate(model, collate, codec, qs, images, max_new_tokens):
        calls.append((list(qs), list(images), max_new_tokens))
        return [answer_of[q] for q in qs]

    monkeypatch.setattr(scoring, "generate", fake_generate)
    items = [{"text": q, "image": f"img{i}", "label": lab}
             for i, (q, lab) in enumerate(zip(questions, labels, strict=True))]
    result = score_pope(None, None, None, items, lambda name: name.upper(), batch_size=4, max_new_tokens=4)
    # parsed: no, yes, yes, yes ("Not" is no negation to the script), yes (empty), no
    # right:  yes, no,  yes, no,  yes, no -> 3 of 6; TP 2 (items 2, 4), said yes 4, truly yes 3
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["precision"] == pytest.approx(2 / 4) and result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert result["yes_ratio"] == pytest.approx(4 / 6) and result["n"] == 6
    assert result["accuracy_se"] == pytest.approx(np.std([1, 0, 1, 0, 1, 0], ddof=1) / np.sqrt(6))
    assert calls == [(questions[:4], ["IMG0", "IMG1", "IMG2", "IMG3"], 4), (questions[4:], ["IMG4", "IMG5"], 4)]


# ---------------------------------------------------------------- VQA answers


def ten(matching: str, n: int, other: str = "blue") -> list[str]:
    return [matching] * n + [other] * (10 - n)


def vqa_item(i: int, answers: list[str], mca: str, image: str | None = None) -> dict:
    """A question as readers.read_vqa gives it."""
    return {"question_id": i, "image_id": i, "question": f"vqa question number {i}?", "image": image or f"img{i}",
            "answers": answers, "answer_type": "other", "multiple_choice_answer": mca}


def script_answers(monkeypatch, answer_of: dict[str, str]) -> list[tuple]:
    """Replace the greedy decoder by one answering each question with `answer_of[question]`; the
    calls it gets are recorded in the returned list."""
    calls = []

    def fake_generate(model, collate, codec, qs, images, max_new_tokens):
        calls.append((model, collate, codec, list(qs), list(images), max_new_tokens))
        return [answer_of[q] for q in qs]

    monkeypatch.setattr(scoring, "generate", fake_generate)
    return calls


# (model answer, the ten human answers, its VQA accuracy), worked by hand. With n of ten humans giving
# the answer, leaving out each human in turn leaves n - 1 matches (n times) or n (10 - n times), each
# worth min(matches / 3, 1); the accuracy is the mean of those ten.
@pytest.mark.parametrize(("prediction", "answers", "expected"), [
    ("red", ten("red", 10), 1.0),  # 10 x min(9/3, 1) / 10
    ("red", ten("red", 2), 0.6),  # (2 x 1/3 + 8 x 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10
    ("red", ten("red", 1), 0.3),  # (1 x 0/3 + 9 x 1/3) / 10 = 3/10
    ("red", ten("red", 3), 0.9),  # (3 x 2/3 + 7 x 3/3) / 10 = (2 + 7) / 10
    ("red", ten("red", 4), 1.0),  # (4 x 3/3 + 6 x 1) / 10: every subset keeps 3 or more
    ("green", ten("red", 10), 0.0),  # nobody said it
    ("two", ten("2", 10), 1.0),  # number word: "two" -> "2", which all ten gave
    ("Two", ten("2", 2, "3"), 0.6),  # "Two" -> "2", given by 2 of 10
    ("  Ten\n", ten("10", 3, "9"), 0.9),  # whitespace stripped, "ten" -> "10": 3 of 10
    ("The dog.", ten("dog", 10), 1.0),  # full stop dropped, lower-cased, article dropped: "dog"
    ("a dog", ten("dog", 3, "cat"), 0.9),  # "dog": 3 of 10
    ("yes!", ten("yes", 1, "no"), 0.3),  # "!" becomes a space, split away: "yes", 1 of 10
    ("red, blue", ten("red blue", 2), 0.6),  # ", " in the text: the comma is removed: "red blue", 2 of 10
])
def test_score_vqa_scores_one_answer_by_the_vqa_rule(monkeypatch, prediction, answers, expected):
    item = vqa_item(0, answers, mca=answers[-1])
    calls = script_answers(monkeypatch, {item["question"]: prediction})
    result = score_vqa("model", "collate", "codec", [item], str.upper, batch_size=4, max_new_tokens=3)
    assert result["accuracy"] == pytest.approx(expected)
    assert result["examples"] == [(item["question"], prediction, answers[-1])]  # the raw answer, as given
    assert calls == [("model", "collate", "codec", [item["question"]], ["IMG0"], 3)]


def test_score_vqa_is_the_mean_over_questions_in_batches(monkeypatch):
    rows = [  # (model answer, humans, multiple_choice_answer): accuracy by hand as above
        ("red", ten("red", 10), "red"),  # 1.0
        ("Two", ten("2", 2, "3"), "3"),  # "2", 2 of 10: 0.6
        ("yes!", ten("yes", 1, "no"), "no"),  # "yes", 1 of 10: 0.3
        ("The dog.", ten("dog", 3, "cat"), "cat"),  # "dog", 3 of 10: 0.9
        ("green", ten("red", 10), "red"),  # 0.0
        ("Ten", ten("10", 4, "9"), "9"),  # "10", 4 of 10: 1.0
        ("blue", ten("blue", 1, "red"), "red"),  # 1 of 10: 0.3
    ]
    items = [vqa_item(i, answers, mca) for i, (_, answers, mca) in enumerate(rows)]
    calls = script_answers(monkeypatch, {it["question"]: pred for it, (pred, _, _) in zip(items, rows, strict=True)})
    result = score_vqa("model", "collate", "codec", items, str.upper, batch_size=3, max_new_tokens=5)
    # (1.0 + 0.6 + 0.3 + 0.9 + 0.0 + 1.0 + 0.3) / 7 = 4.1 / 7 = 0.5857142857...; a mean of the three
    # batches' means would be (1.9/3 + 1.9/3 + 0.3) / 3 = 0.5222...
    assert result["accuracy"] == pytest.approx(0.5857142857)
    # the first three questions, each with the model's raw answer and the multiple-choice answer
    assert result["examples"] == [("vqa question number 0?", "red", "red"), ("vqa question number 1?", "Two", "3"),
                                  ("vqa question number 2?", "yes!", "no")]
    questions = [it["question"] for it in items]
    assert calls == [("model", "collate", "codec", questions[0:3], ["IMG0", "IMG1", "IMG2"], 5),
                     ("model", "collate", "codec", questions[3:6], ["IMG3", "IMG4", "IMG5"], 5),
                     ("model", "collate", "codec", questions[6:], ["IMG6"], 5)]


def test_score_vqa_through_greedy_decoding(codec):
    """The real decoder, with a scripted model answering "two" and "red circle"."""
    eos = codec.ids["eos"]
    two, red_circle = codec.encode("two"), codec.encode("red circle")
    assert (codec.decode(two), codec.decode(red_circle)) == ("two", "red circle")
    assert len(red_circle) == 7  # decoding stops at the eos after its 7 tokens, before max_new_tokens
    model = Scripted(codec.vocab_size, eos, [two + [eos], red_circle + [eos]])
    images = {"a": solid((255, 0, 0)), "b": solid((0, 0, 255))}
    items = [vqa_item(0, ten("2", 2, "3"), "3", image="a"), vqa_item(1, ten("red circle", 10), "red circle", image="b")]
    result = score_vqa(model, collator(codec, 4), codec, items, images.__getitem__, batch_size=2, max_new_tokens=10)
    # "two" -> "2", given by 2 of 10: 0.6; "red circle" by all ten: 1.0; (0.6 + 1.0) / 2 = 0.8
    assert result["accuracy"] == pytest.approx(0.8)
    assert result["examples"] == [("vqa question number 0?", "two", "3"),
                                  ("vqa question number 1?", "red circle", "red circle")]


# ---------------------------------------------------------------- the blank-image control


def test_blank_images_make_the_image_invisible_to_evaluation(codec, vlm):
    red, blue = solid((255, 0, 0)), solid((0, 0, 255))
    question = ["what colour are the shapes?"]
    blank, seeing = collator(codec, vlm.num_image_tokens, blank=True), collator(codec, vlm.num_image_tokens)

    grey = (torch.tensor(GREY, dtype=torch.float32) / 255 - 0.5) / 0.5
    for image in (red, blue):
        torch.testing.assert_close(blank.pixels([image]), grey.view(1, 3, 1, 1).expand(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert torch.equal(blank.pixels([red]), blank.pixels([blue]))
    logits = [last_logits(vlm, blank, codec, question, [image]) for image in (red, blue)]
    assert torch.equal(*logits)
    assert generate(vlm, blank, codec, question, [red], 5) == generate(vlm, blank, codec, question, [blue], 5)

    assert not torch.allclose(seeing.pixels([red]), seeing.pixels([blue]))
    seen_red, seen_blue = (last_logits(vlm, seeing, codec, question, [image]) for image in (red, blue))
    assert not torch.allclose(seen_red, seen_blue, rtol=0, atol=1e-4)


def test_the_pipelines_eval_collator_passes_the_blank_flag(codec, vlm):
    from pipeline.common import image_collator  # imported here: the pipeline package is being refactored

    red, blue = solid((255, 0, 0)), solid((0, 0, 255))
    blank, seeing = image_collator(codec, vlm, blank=True), image_collator(codec, vlm, blank=False)
    assert blank.n_img == seeing.n_img == vlm.num_image_tokens
    assert torch.equal(blank.pixels([red]), blank.pixels([blue]))
    assert torch.equal(blank.pixels([red]), collator(codec, vlm.num_image_tokens, blank=True).pixels([red]))
    assert torch.equal(seeing.pixels([red, blue]), collator(codec, vlm.num_image_tokens).pixels([red, blue]))


# ---------------------------------------------------------------- the KV cache


def never_eos(model: VLM, codec: Codec) -> VLM:
    """A copy whose eos logit is 0 (random weights' best logit is higher), so every answer is long."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.lm.lm_head.weight[codec.ids["eos"]] = 0.0
    return model


def test_cached_decoding_gives_the_uncached_tokens(codec, vlm):
    """A left-padded batch of prompts of different lengths, each with its own image: greedy decoding
    with the KV cache picks exactly the tokens that recomputing the whole sequence picks, and the
    logits of every step agree to float rounding."""
    model, collate = never_eos(vlm, codec), collator(codec, vlm.num_image_tokens)
    images = [noisy(0), solid((220, 50, 40)), noisy(2)]
    prompts = [np.array(codec.prompt(f"{IMAGE_MARK}\n{q}")) for q in QUESTIONS]
    ids, mask = left_pad([collate.expand(p, np.zeros_like(p))[0] for p in prompts], codec.ids["pad"])
    pixels = collate.pixels(images)
    cache = KVCache()
    step_ids, step_pixels, full, full_mask = ids, pixels, ids, mask
    tokens = {"cached": [], "uncached": []}
    with torch.no_grad():
        for _ in range(10):
            cached = model(step_ids, images=step_pixels, pad_mask=full_mask, cache=cache)[:, -1]
            uncached = model(full, images=pixels, pad_mask=full_mask)[:, -1]
            torch.testing.assert_close(cached, uncached, rtol=0, atol=1e-5)
            nxt = uncached.argmax(-1)
            tokens["cached"].append(cached.argmax(-1).tolist())
            tokens["uncached"].append(nxt.tolist())
            full = torch.cat([full, nxt[:, None]], 1)
            full_mask = torch.cat([full_mask, torch.ones_like(nxt[:, None], dtype=torch.bool)], 1)
            step_ids, step_pixels = nxt[:, None], None
    assert tokens["cached"] == tokens["uncached"]
    assert cache.length == full.shape[1] - 1  # the last token chosen was never fed
    assert len({tuple(t) for t in tokens["uncached"]}) > 1  # the steps differ: a real sequence
    answers = {c: generate(model, collate, codec, QUESTIONS, images, 10, use_cache=c) for c in (True, False)}
    assert answers[True] == answers[False] and all(answers[True])


def test_cached_positions_count_toward_max_seq_len(codec, vlm):
    model = never_eos(vlm, codec)
    limit = model.lm.cfg.max_seq_len
    prompt_len = len(codec.prompt(f"{IMAGE_MARK}\n{QUESTIONS[0]}")) - 1 + model.num_image_tokens
    with pytest.raises(ValueError, match=f"longer than max_seq_len={limit}"):
        generate(model, collator(codec, model.num_image_tokens), codec, [QUESTIONS[0]], [noisy(0)],
                 limit - prompt_len + 2)


@pytest.mark.parametrize(("n", "size", "world"), [(23, 5, 2), (23, 5, 3), (4, 5, 2), (10, 1, 4)])
def test_processes_split_a_task_by_whole_batches(n, size, world):
    one = scoring.my_batches(n, size)
    parts = [scoring.my_batches(n, size, rank, world) for rank in range(world)]
    assert sorted((b for p in parts for b in p), key=lambda b: b.start) == one  # the same batches, each once
    assert [i for b in one for i in b] == list(range(n))
