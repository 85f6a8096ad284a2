"""Tokenizer and token files: special-token ids, determinism, the sequence formats and their loss masks."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from vlm.data.tokenizer import (
    IMAGE_MARK,
    MIN_VOCAB,
    SPECIAL_TOKENS,
    Codec,
    load_tokenizer,
    train_tokenizer,
)
from vlm.data.tokens import Ragged, encode_sources, token_counts

VOCAB = 300


def sentences() -> list[str]:
    """A few hundred short sentences about coloured shapes."""
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    shapes = ["circle", "square", "triangle", "star", "hexagon"]
    places = ["on the left", "on the right", "at the top", "in the middle", "near the bottom"]
    counts = ["one", "two", "three", "four"]
    return [f"There are {n} {c} {s}s {p}." for c, s, p, n in product(colours, shapes, places, counts)]


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec(train_tokenizer(sentences(), VOCAB, show_progress=False))


def runs(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of ones in `mask`."""
    out, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


# ---- training -----------------------------------------------------------------------------------

def test_special_tokens_get_the_first_ids_in_order(codec):
    assert len(sentences()) >= 300
    for i, text in enumerate(SPECIAL_TOKENS.values()):
        assert codec.tok.token_to_id(text) == i
    assert codec.ids == {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    assert MIN_VOCAB < codec.vocab_size <= VOCAB


def test_special_tokens_encode_as_one_token(codec):
    for name, text in SPECIAL_TOKENS.items():
        assert codec.tok.encode(text, add_special_tokens=False).ids == [codec.ids[name]]


def test_text_round_trips(codec):
    for text in ["There are two red circles on the left.", "Ünïcode and émoji 🙂 survive bytes."]:
        assert codec.decode(codec.encode(text)) == text


def test_vocab_below_minimum_is_refused():
    with pytest.raises(ValueError, match=f">= {MIN_VOCAB}"):
        train_tokenizer(sentences(), MIN_VOCAB - 1, show_progress=False)


def test_minimum_vocab_is_accepted():
    tok = train_tokenizer(sentences()[:20], MIN_VOCAB, show_progress=False)
    assert tok.get_vocab_size() == MIN_VOCAB


def test_training_twice_gives_identical_files(tmp_path):
    for name in ("a", "b"):
        train_tokenizer(sentences(), VOCAB, show_progress=False).save(str(tmp_path / f"{name}.json"))
    first, second = (tmp_path / "a.json").read_bytes(), (tmp_path / "b.json").read_bytes()
    assert len(first) > 1000
    assert first == second


# ---- sequence formats ---------------------------------------------------------------------------

def test_document_format(codec):
    ids = codec.encode("two red stars")
    assert codec.document(ids) == [codec.ids["bos"], *ids, codec.ids["eos"]]


def test_caption_mask_marks_caption_and_eos(codec):
    caption = "There are three blue squares at the top."
    ids, mask = codec.caption(codec.encode(caption))
    assert len(ids) == len(mask)
    assert ids[:2] == [codec.ids["bos"], codec.ids["image"]]
    assert ids[-1] == codec.ids["eos"]
    assert mask[:2] == [0, 0] and all(mask[2:])
    masked = [t for t, m in zip(ids, mask, strict=True) if m]
    assert masked[-1] == codec.ids["eos"]
    assert codec.decode(masked) == caption


def test_conversation_mask_marks_answers_and_their_eos(codec):
    turns = [
        (f"{IMAGE_MARK}\nWhat colour is the circle?", "It is red."),
        ("How many stars are there?", "There are two stars."),
        ("And squares?", "None."),
    ]
    ids, mask = codec.conversation(turns)
    assert len(ids) == len(mask) and ids[0] == codec.ids["bos"] and mask[0] == 0
    spans = runs(mask)
    assert len(spans) == len(turns)
    for (start, end), (_, answer) in zip(spans, turns, strict=True):
        assert ids[end - 1] == codec.ids["eos"]
        assert ids[start - 1] == codec.ids["assistant"]
        assert codec.decode(ids[start:end]) == answer
    assert sum(mask) == sum(len(codec.encode(a)) + 1 for _, a in turns)
    # Nothing outside the answers is in the loss: no question, role or image token.
    roles = {codec.ids["user"], codec.ids["assistant"], codec.ids["image"], codec.ids["bos"]}
    assert roles <= {t for t, m in zip(ids, mask, strict=True) if not m}
    assert not roles & {t for t, m in zip(ids, mask, strict=True) if m}


@pytest.mark.parametrize("question", [
    f"{IMAGE_MARK}\nWhat colour is the circle?",
    f"What colour is the circle?\n{IMAGE_MARK}",
    f"Look: {IMAGE_MARK} what colour is the circle?",
])
def test_image_mark_becomes_one_image_token(codec, question):
    ids = codec.user_turn(question)
    assert ids[0] == codec.ids["user"] and ids[-1] == codec.ids["assistant"]
    assert ids.count(codec.ids["image"]) == 1
    text = codec.decode(ids)
    assert IMAGE_MARK not in text and "<" not in text
    assert "what colour is the circle?" in text.lower()


def test_user_turn_without_image_has_no_image_token(codec):
    ids = codec.user_turn("How many stars are there?")
    assert codec.ids["image"] not in ids
    assert ids == [codec.ids["user"], *codec.encode("How many stars are there?"), codec.ids["assistant"]]


def test_prompt_is_the_start_of_a_conversation(codec):
    question = f"{IMAGE_MARK}\nWhat shape is it?"
    ids, _ = codec.conversation([(question, "A star.")])
    prompt = codec.prompt(question)
    assert ids[: len(prompt)] == prompt and prompt[-1] == codec.ids["assistant"]


# ---- loading ------------------------------------------------------------------------------------

def test_load_tokenizer_adds_missing_special_tokens(tmp_path):
    plain = Tokenizer(models.BPE())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    plain.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    plain.train_from_iterator(sentences(), trainer=trainer)
    path = tmp_path / "tokenizer.json"
    plain.save(str(path))
    assert all(plain.token_to_id(t) is None for t in SPECIAL_TOKENS.values())
    size = plain.get_vocab_size()

    tok = load_tokenizer(path)
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS.values()]
    assert sorted(ids) == list(range(size, size + len(SPECIAL_TOKENS)))
    codec = Codec(tok)
    assert codec.vocab_size == size + len(SPECIAL_TOKENS)
    assert codec.user_turn(IMAGE_MARK).count(codec.ids["image"]) == 1
    assert codec.decode(codec.caption(codec.encode("two stars"))[0]) == "two stars"


def test_load_tokenizer_keeps_our_own_ids(tmp_path, codec):
    path = tmp_path / "tokenizer.json"
    codec.tok.save(str(path))
    assert Codec(load_tokenizer(path)).ids == codec.ids
    assert Codec.from_file(path).ids == codec.ids


@pytest.mark.parametrize("content", ["not json at all", json.dumps({"hello": "world"})])
def test_load_tokenizer_rejects_other_files(tmp_path, content):
    path = tmp_path / "weights.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="not a readable") as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)


# ---- token files --------------------------------------------------------------------------------

def test_ragged_save_load_round_trip(tmp_path):
    seqs, masks = [[5, 6, 7], [], [8, 9]], [[0, 1, 1], [], [1, 0]]
    images = ["img/a.png", None, "img/b.png"]
    ragged = Ragged.from_lists(seqs, masks, images=images)
    assert len(ragged) == 3 and ragged.ids.dtype == np.int32 and ragged.offsets.dtype == np.int64
    ragged.save(tmp_path, "src")
    back = Ragged.load(tmp_path, "src")
    assert [back[i].tolist() for i in range(len(back))] == seqs
    assert [back.mask_of(i).tolist() for i in range(len(back))] == masks
    assert list(back.images) == images
    assert back.ids.dtype == np.int32 and back.mask.dtype == np.uint8


def test_ragged_without_mask_and_images(tmp_path):
    Ragged.from_lists([[1, 2], [3]]).save(tmp_path, "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.ids.npy", "text.offsets.npy"]
    back = Ragged.load(tmp_path, "text")
    assert back.mask is None and back.images is None
    assert back[1].tolist() == [3]


def test_ragged_saves_identical_bytes(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Ragged.from_lists([[1, 2], [3]], [[1, 0], [1]], images=["x.png", None]).save(tmp_path / folder, "s")
    for name in ("s.ids.npy", "s.offsets.npy", "s.mask.npy", "s.images.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_encode_sources_and_token_counts(codec, tmp_path: Path):
    texts = ["There are two red stars.", "A blue circle is on the left."]
    captions = [("images/0.png", "a red star"), ("images/1.png", "two blue circles")]
    convs = [
        {"id": "0", "image": "images/0.png", "conversations": [
            {"from": "human", "value": f"{IMAGE_MARK}\nWhat colour is the star?"},
            {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "How many?"},
            {"from": "gpt", "value": "One."},
        ]},
        {"id": "1", "conversations": [
            {"from": "human", "value": "What is a hexagon?"},
            {"from": "gpt", "value": "A shape with six sides."},
        ]},
    ]
    (tmp_path / "tokens").mkdir()
    sources = encode_sources(codec, texts, captions, convs, tmp_path / "tokens", batch=1)
    assert set(sources) == {"text", "captions", "instruct"}
    assert [codec.decode(sources["text"][i]) for i in range(2)] == texts
    assert [codec.decode(sources["captions"][i]) for i in range(2)] == [c for _, c in captions]
    assert list(sources["captions"].images) == ["images/0.png", "images/1.png"]
    instruct = sources["instruct"]
    assert list(instruct.images) == ["images/0.png", None]
    assert instruct[0].tolist().count(codec.ids["image"]) == 1
    assert codec.ids["image"] not in instruct[1].tolist()
    answers = [codec.decode(instruct[i][instruct.mask_of(i) == 1]) for i in range(2)]
    assert answers == ["Red.One.", "A shape with six sides."]

    counts = token_counts(sources)
    assert counts["text"] == {"records": 2, "tokens": sum(len(codec.encode(t)) for t in texts)}
    assert counts["captions"] == {"records": 2, "tokens": sum(len(codec.encode(c)) for _, c in captions)}
    assert counts["instruct"]["records"] == 2
    assert counts["instruct"]["tokens"] == len(instruct.ids)
    answer_tokens = sum(len(codec.encode(a)) + 1 for a in ["Red.", "One.", "A shape with six sides."])
    assert counts["instruct"]["assistant_tokens"] == answer_tokens
    assert counts["instruct"]["with_image"] == 1

    for name, ragged in sources.items():
        ragged.save(tmp_path, name)
    assert token_counts({name: Ragged.load(tmp_path, name) for name in sources}) == counts
