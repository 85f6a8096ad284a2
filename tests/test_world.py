"""The embedded synthetic world: determinism, layout, and the honesty of its questions."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import asdict
from itertools import combinations, product
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SEED, small_world_params
from PIL import Image

from pipeline.__main__ import main as run_stage
from vlm import config
from vlm.config import ParamError, parse
from vlm.data import readers
from vlm.data import world as W


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _creatures(raw: Path) -> list[dict]:
    return json.loads((raw / "world.json").read_text())["creatures"]


def _is_balanced(values: list[str], vocab: tuple[str, ...]) -> bool:
    counts = Counter(values)
    assert set(counts) <= set(vocab)
    return max(counts[v] for v in vocab) - min(counts[v] for v in vocab) <= 1


# ---- determinism and layout ---------------------------------------------------------------------

def test_same_params_give_byte_identical_files(tmp_path, world_params, small_world):
    out = tmp_path / "raw"
    W.write_world(world_params(), SEED, out)
    assert _digests(out) == _digests(small_world)
    other = tmp_path / "other"
    W.write_world(world_params(), 8, other)
    assert _digests(other)["text.jsonl"] != _digests(small_world)["text.jsonl"]


def test_training_data_does_not_depend_on_the_eval_size(tmp_path, world_params, small_world):
    out = tmp_path / "raw"
    W.write_world(world_params(n_eval=10), SEED, out)
    before, after = _digests(small_world), _digests(out)
    training = [k for k in before if not k.startswith("eval/") and k != "world.json"]
    assert training and all(before[k] == after[k] for k in training)
    assert len(_lines(out / "eval" / "pope.jsonl")) == 10


def test_layout(small_world):
    raw = small_world
    names = ["text.jsonl", "captions.jsonl", "instruct.json", "world.json", "eval/tasks.json",
             "eval/pope.jsonl", "eval/vqa_questions.json", "eval/vqa_annotations.json", "eval/text_mc.jsonl"]
    for name in names:
        assert (raw / name).is_file(), name
    assert sorted(p.name for p in (raw / "images").iterdir()) == [f"{i:06d}.png" for i in range(40)]
    assert len(list((raw / "eval" / "images").iterdir())) == 2 * 48
    with Image.open(raw / "images" / "000000.png") as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (32, 32))
    assert len(_lines(raw / "text.jsonl")) == 60
    assert _lines(raw / "captions.jsonl")[3]["image"] == "images/000003.png"
    tasks = json.loads((raw / "eval" / "tasks.json").read_text())
    assert set(tasks) == {"vqa", "pope", "text_mc"}
    assert (tasks["pope"]["chance"], tasks["text_mc"]["chance"]) == (0.5, 0.25)
    counts = json.loads((raw / "world.json").read_text())["counts"]
    assert counts["instruct_text"] == 15 and counts["instruct_vision"] == 45


def test_every_file_passes_its_reader(small_world):
    raw, ev = small_world, small_world / "eval"
    assert len(readers.read_text(raw / "text.jsonl")) == 60
    assert len(readers.read_captions(raw / "captions.jsonl")) == 40
    assert len(readers.read_llava(raw / "instruct.json")) == 60
    tasks = json.loads((ev / "tasks.json").read_text())
    vqa = readers.read_vqa(ev / tasks["vqa"]["questions"], ev / tasks["vqa"]["annotations"],
                           ev / tasks["vqa"]["image_dir"])
    assert len(vqa) == len(readers.read_pope(ev / "pope.jsonl")) == 48
    assert len(readers.read_mc(ev / "text_mc.jsonl")) == 48
    assert vqa[0]["image"] == ev / "images" / f"{vqa[0]['image_id']:06d}.png"


def test_a_crash_keeps_the_old_world_and_a_rerun_replaces_it(tmp_path, world_params, monkeypatch):
    out = tmp_path / "raw"
    W.write_world(world_params(), SEED, out)
    (out / "stale.txt").write_text("from an older run")

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    with monkeypatch.context() as m:
        m.setattr(W, "make_corpus", crash)
        with pytest.raises(RuntimeError):
            W.write_world(world_params(), SEED, out)
    assert (out / "stale.txt").exists() and (out / "world.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no half-written sibling left
    W.write_world(world_params(), SEED, out)
    assert not (out / "stale.txt").exists()


def test_eval_images_are_never_training_images(small_world):
    train = set(_digests(small_world / "images").values())
    held_out = set(_digests(small_world / "eval" / "images").values())
    assert train and held_out and not train & held_out


# ---- captions and instructions -----------------------------------------------------------------

@pytest.mark.parametrize("count", W.COUNTS)
def test_captions_describe_only_what_the_image_shows(count):
    scene = W.Scene("cross", "yellow", "small", count, tuple(range(count)))
    for template in W.CAPTIONS:
        text = W.describe(scene, template)
        assert text == text.lower() and text.endswith(".")
        assert {"yellow", "small", W.COUNT_WORDS[count]} <= set(re.findall(r"[a-z]+", text))
        assert ("cross" if count == 1 else "crosses") in text
        assert ("top left" in text) == (count == 1)
    assert W.describe(W.Scene("cross", "yellow", "small", 3, (0, 1, 3)), W.CAPTIONS[2]) == \
        "three yellow crosses, all of them small."


def test_instructions(small_world):
    convs = readers.read_llava(small_world / "instruct.json")
    captions = {r["image"]: r["caption"] for r in _lines(small_world / "captions.jsonl")}
    teachers = {c["name"]: c["facts"] for c in _creatures(small_world) if c["group"] == "instruct"}
    text_only = [c for c in convs if "image" not in c]
    assert len(text_only) == 15
    for conv in convs:
        turns = conv["conversations"]
        pairs = [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns), 2)]
        assert 1 <= len(pairs) <= 3
        if "image" not in conv:
            assert not any("<image>" in t["value"] for t in turns)
            for q, a in pairs:
                name = re.search(r"the (\w+)", q).group(1)
                assert name in teachers and a in teachers[name].values()
            continue
        assert pairs[0][0].startswith("<image>\n")
        words = set(re.findall(r"[a-z0-9]+", captions[conv["image"]]))
        for q, a in pairs:
            q = q.removeprefix("<image>\n")
            if q.startswith("is there"):
                assert a in ("yes", "no")
            else:
                kind = next(k for k, text in W.VISION_QUESTIONS.items() if text == q)
                assert a in W.VISION_ANSWERS[kind] and a not in q
                word = W.COUNT_WORDS[int(a)] if kind == "count" else a
                assert word in words or W.PLURALS.get(word, word) in words  # the answer matches the caption


# ---- honesty of the evaluation sets -------------------------------------------------------------

def test_vqa_answers_are_balanced_per_question_and_absent_from_its_text(small_world):
    ev = small_world / "eval"
    items = readers.read_vqa(ev / "vqa_questions.json", ev / "vqa_annotations.json")
    by_text = defaultdict(list)
    for item in items:
        assert item["answers"] == [item["multiple_choice_answer"]] * 10
        by_text[item["question"]].append(item["multiple_choice_answer"])
    assert set(by_text) == set(W.VISION_QUESTIONS.values())
    assert max(map(len, by_text.values())) - min(map(len, by_text.values())) <= 1
    for kind, text in W.VISION_QUESTIONS.items():
        assert _is_balanced(by_text[text], W.VISION_ANSWERS[kind])
        assert not any(a in text for a in W.VISION_ANSWERS[kind])  # not even as a substring
    chance = json.loads((ev / "tasks.json").read_text())["vqa"]["chance"]
    assert chance == pytest.approx((1 / 4 + 1 / 4 + 1 / 3 + 1 / 2) / 4, abs=1e-6)


def test_vqa_images_show_the_answer():
    for kind, answer, scene in W.make_vqa(np.random.default_rng(1), 40):
        assert scene.answer(kind) == answer


def test_pope_labels_are_true_and_balanced_per_question():
    items = W.make_pope(np.random.default_rng(2), 64)
    by_text = defaultdict(list)
    for text, label, scene in items:
        shown = W.EXISTS_QUESTION.format(colour=scene.colour, shape=scene.shape)
        assert (shown == text) == (label == "yes")
        by_text[text].append(label)
    assert all(labels.count("yes") == labels.count("no") for labels in by_text.values())


def test_pope_file_is_balanced(small_world):
    items = readers.read_pope(small_world / "eval" / "pope.jsonl")
    labels = defaultdict(list)
    for item in items:
        labels[item["text"]].append(item["label"])
    assert sum(v.count("yes") for v in labels.values()) == 24
    assert all(abs(v.count("yes") - v.count("no")) <= 1 for v in labels.values())


def test_creature_facts_are_balanced_random_assignments():
    creatures = W.make_creatures(np.random.default_rng(3), 32, 8)
    names = [c.name for c in creatures]
    assert len(set(names)) == 32 and all(re.fullmatch(r"[a-z]+", n) for n in names)
    for group, size in (("instruct", 8), ("eval", 24)):
        members = [c for c in creatures if c.group == group]
        assert len(members) == size
        for attr, vocab in W.ATTRIBUTES.items():
            assert Counter(c.facts[attr] for c in members) == {v: size // 8 for v in vocab}
    again = W.make_creatures(np.random.default_rng(4), 32, 8)
    assert [c.facts for c in again] != [c.facts for c in creatures]


def test_text_mc_asks_only_about_eval_creatures_with_balanced_answers(small_world):
    facts = {c["name"]: c for c in _creatures(small_world)}
    items = readers.read_mc(small_world / "eval" / "text_mc.jsonl")
    assert Counter(item["answer"] for item in items) == {0: 12, 1: 12, 2: 12, 3: 12}
    for item in items:
        name = re.search(r"the (\w+)", item["stem"]).group(1)
        attr = next(a for a, q in W.QUESTIONS.items() if q.format(name=name) == item["stem"])
        answer = item["choices"][item["answer"]]
        assert facts[name]["group"] == "eval" and facts[name]["facts"][attr] == answer
        assert len(set(item["choices"])) == 4 and set(item["choices"]) <= set(W.ATTRIBUTES[attr])
        assert answer not in item["stem"]


def test_every_fact_is_stated_in_the_corpus_and_eval_facts_nowhere_else(small_world):
    corpus = " ".join(readers.read_text(small_world / "text.jsonl"))
    instruct = (small_world / "instruct.json").read_text()
    for c in W.make_creatures(W.child_rng(7, "creatures"), 6, 2):
        for attr in W.ATTRIBUTES:
            for template in range(W.N_TEMPLATES):
                assert W.fact_sentence(c, attr, template) in corpus
            qa = f"question: {W.question(c, attr)} answer: {c.facts[attr]}."
            assert qa in corpus
        assert (c.name in instruct) == (c.group == "instruct")



def test_the_params_check_knows_the_sizes_of_the_fact_tables():
    """vlm/config.py checks `prepare.n_text_docs` with the sizes of these tables (the schema imports
    nothing of the library); with exactly that many documents every fact is stated in every template."""
    assert len(W.ATTRIBUTES) == config.WORLD_ATTRIBUTES and len(W.QUESTIONS) == config.WORLD_ATTRIBUTES
    assert {len(t) for t in W.FACT_TEMPLATES.values()} == {W.N_TEMPLATES} == {config.WORLD_TEMPLATES}
    n = config.min_text_docs(3)
    corpus = " ".join(W.make_corpus(W.child_rng(7, "corpus"), W.make_creatures(W.child_rng(7, "creatures"), 3, 1), n))
    for c in W.make_creatures(W.child_rng(7, "creatures"), 3, 1):
        for attr in W.ATTRIBUTES:
            for template in range(W.N_TEMPLATES):
                assert W.fact_sentence(c, attr, template) in corpus

# ---- params and the prepare stage ----------------------------------------------------------------

@pytest.mark.parametrize(("key", "value"), [
    ("n_images", -5), ("n_instruct_creatures", 6), ("text_instruct_share", 1.5), ("image_size", 8),
    ("n_text_docs", 10), ("n_eval", 0),
])
def test_bad_prepare_params_name_the_key(key, value):
    with pytest.raises(ParamError, match=rf"`prepare\.{key}`"):
        parse(_params_with(**{key: value}))


def _params_with(**prepare) -> dict:
    """The committed params.yaml with the small world's `prepare` section (some values changed)."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["seed"] = SEED
    raw["prepare"] = {**asdict(small_world_params()), **prepare}
    return raw


def _run_prepare(tmp_path: Path, monkeypatch, params: dict) -> int:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return run_stage(["prepare"])


def test_prepare_rejects_a_negative_image_count_before_writing(tmp_path, monkeypatch, capsys):
    assert _run_prepare(tmp_path, monkeypatch, _params_with(n_images=-1)) == 2
    assert "`prepare.n_images` must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_prepare_writes_the_world(tmp_path, monkeypatch, capsys, small_world):
    assert _run_prepare(tmp_path, monkeypatch, _params_with()) == 0
    assert _digests(tmp_path / "data" / "raw") == _digests(small_world)
    assert "prepare: done" in capsys.readouterr().out


# ---- rendered pixels ------------------------------------------------------------------------------

RENDER_SIZE = 96  # 48-pixel cells: fine enough to measure sizes and shapes to a pixel
# Per shape, (fill ratio, share of the object's pixels in the top half of its bounding box), each
# as a [lo, hi] range. Fill: square 1, circle pi/4, triangle 1/2; the cross's bars are t = 2 *
# round(side / 6) thick, t / side in about [0.28, 0.38], so it fills 2t/s - (t/s)^2 of its box:
# about 0.48-0.62, too close to the triangle's 1/2 to tell them apart by fill alone. The upright
# triangle puts only 1/4 of its area in the top half; the other shapes, being symmetric, 1/2.
SHAPE_SIGNATURE = {
    "square": ((0.97, 1.0), (0.40, 0.50)),
    "circle": ((0.72, 0.84), (0.40, 0.50)),
    "triangle": ((0.45, 0.60), (0.18, 0.32)),
    "cross": ((0.45, 0.66), (0.38, 0.50)),
}


def _scenes_covering_every_attribute() -> list[W.Scene]:
    cell_sets = {n: list(combinations(range(len(W.POSITIONS)), n)) for n in W.COUNTS}
    scenes = []
    for i, (shape, colour, size) in enumerate(product(W.SHAPES, W.COLOURS, W.SIZES)):
        count = W.COUNTS[i % len(W.COUNTS)]
        scenes.append(W.Scene(shape, colour, size, count, cell_sets[count][i % len(cell_sets[count])]))
    scenes.append(W.Scene("circle", "blue", "big", 3, (1, 2, 3)))
    return scenes


def _cell_slice(k: int, cell: int) -> tuple[slice, slice]:
    """The pixels of grid cell `k`, located by its name in POSITIONS (not by render's arithmetic)."""
    name = W.POSITIONS[k]
    row, col = int("bottom" in name), int("right" in name)
    return slice(row * cell, (row + 1) * cell), slice(col * cell, (col + 1) * cell)


def test_signatures_of_the_shapes_do_not_overlap():
    for a, b in combinations(W.SHAPES, 2):
        (fa, ta), (fb, tb) = SHAPE_SIGNATURE[a], SHAPE_SIGNATURE[b]
        disjoint_fill = fa[1] < fb[0] or fb[1] < fa[0]
        disjoint_top = ta[1] < tb[0] or tb[1] < ta[0]
        assert disjoint_fill or disjoint_top, (a, b)
    # The fill ranges alone separate everything but the triangle from the cross.
    assert SHAPE_SIGNATURE["circle"][0][1] < SHAPE_SIGNATURE["square"][0][0]
    assert SHAPE_SIGNATURE["cross"][0][1] < SHAPE_SIGNATURE["circle"][0][0]


def test_rendered_pixels_show_the_scene():
    scenes = _scenes_covering_every_attribute()
    assert {s.shape for s in scenes} == set(W.SHAPES) and {s.colour for s in scenes} == set(W.COLOURS)
    assert {s.size for s in scenes} == set(W.SIZES) and {s.count for s in scenes} == set(W.COUNTS)
    assert {k for s in scenes for k in s.cells} == set(range(len(W.POSITIONS)))
    cell = RENDER_SIZE // 2
    background = np.array(W.BACKGROUND)
    for i, scene in enumerate(scenes):
        img = W.render(scene, RENDER_SIZE, np.random.default_rng(i))
        assert img.size == (RENDER_SIZE, RENDER_SIZE) and img.mode == "RGB"
        pixels = np.asarray(img).astype(int)
        # Background noise is +-10 per channel, the object's colour jitter +-15; no antialiasing.
        is_background = np.abs(pixels - background).max(-1) <= 10
        is_object = np.abs(pixels - np.array(W.RGB[scene.colour])).max(-1) <= 15
        assert (is_background | is_object).all(), f"{scene}: pixels of neither the background nor {scene.colour}"
        for other in set(W.COLOURS) - {scene.colour}:
            assert not (np.abs(pixels - np.array(W.RGB[other])).max(-1) <= 30).any(), (scene, other)
        lo, hi = W.SIZE_FRACTION[scene.size]
        fill_range, top_range = SHAPE_SIGNATURE[scene.shape]
        for k in range(len(W.POSITIONS)):
            rows, cols = _cell_slice(k, cell)
            obj = is_object[rows, cols]
            if k not in scene.cells:
                assert obj.sum() == 0, f"{scene}: object pixels in the empty cell {W.POSITIONS[k]}"
                continue
            ys, xs = np.nonzero(obj)
            assert len(ys), f"{scene}: no object in {W.POSITIONS[k]}"
            box = obj[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            h, w = box.shape
            # The drawn box is round(cx + side/2) - round(cx - side/2) pixels: side +- 1.
            for extent in (h, w):
                assert lo * cell - 1 <= extent <= hi * cell + 1, (scene, k, extent / cell)
            fill = box.mean()
            top = box[: h // 2].sum() / box.sum()
            assert fill_range[0] <= fill <= fill_range[1], (scene, k, fill)
            assert top_range[0] <= top <= top_range[1], (scene, k, top)
