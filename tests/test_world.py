"""The embedded synthetic world: determinism, layout, and the honesty of its questions."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
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

ROOT = Path(__file__).resolve().parents[1]


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


def test_the_files_do_not_depend_on_the_hash_seed(tmp_path, small_world):
    """Each `dvc repro` is a new process with its own string-hash seed: iterating a set of strings
    would make the files differ from run to run (it did, once: which shown kind an "is there" asked)."""
    for hash_seed in ("1", "2"):
        code = ("import sys; from pathlib import Path; from conftest import SEED, SMALL_WORLD; "
                "from vlm.data import world; world.write_world(SMALL_WORLD, SEED, Path(sys.argv[1]))")
        path = f"{ROOT}{os.pathsep}{ROOT / 'tests'}"
        subprocess.run([sys.executable, "-c", code, str(tmp_path / hash_seed)], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": path})
        assert _digests(tmp_path / hash_seed) == _digests(small_world)


def test_training_data_does_not_depend_on_the_eval_size(tmp_path, world_params, small_world):
    out = tmp_path / "raw"
    W.write_world(world_params(n_eval=10), SEED, out)
    before, after = _digests(small_world), _digests(out)
    training = [k for k in before if not k.startswith("eval/") and k != "world.json"]
    assert training and all(before[k] == after[k] for k in training)
    assert len(_lines(out / "eval" / "pope_random.jsonl")) == 10


def test_layout(small_world):
    raw = small_world
    names = ["text.jsonl", "captions.jsonl", "instruct.json", "world.json", "eval/tasks.json", "eval/scenes.json",
             "eval/pope_random.jsonl", "eval/pope_popular.jsonl", "eval/pope_adversarial.jsonl",
             "eval/vqa_questions.json", "eval/vqa_annotations.json", "eval/caption_only.jsonl",
             "eval/text_mc.jsonl"]
    for name in names:
        assert (raw / name).is_file(), name
    assert sorted(p.name for p in (raw / "images").iterdir()) == [f"{i:06d}.png" for i in range(40)]
    # an image per question: vqa, the three POPE splits and caption_only
    assert len(list((raw / "eval" / "images").iterdir())) == 5 * 48
    with Image.open(raw / "images" / "000000.png") as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (48, 48))
    assert len(_lines(raw / "text.jsonl")) == 60
    assert _lines(raw / "captions.jsonl")[3]["image"] == "images/000003.png"
    tasks = json.loads((raw / "eval" / "tasks.json").read_text())
    assert set(tasks) == {"vqa", "caption_only", "pope_random", "pope_popular", "pope_adversarial", "text_mc"}
    assert [tasks[f"pope_{s}"]["chance"] for s in W.POPE_SPLITS] == [0.5] * 3
    assert (tasks["caption_only"]["chance"], tasks["text_mc"]["chance"]) == (0.5, 0.25)
    assert tasks["caption_only"]["kind"] == "caption"
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
    assert len(vqa) == 48
    for name in ("pope_random", "pope_popular", "pope_adversarial"):
        assert len(readers.read_pope(ev / tasks[name]["file"])) == 48
    assert len(readers.read_mc(ev / tasks["caption_only"]["file"], image=True)) == 48
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


# ---- what the files say about the scenes ---------------------------------------------------------

THING = re.compile(r"a (small|big) (\w+) (\w+) in the ((?:top|middle|bottom) (?:left|middle|right)|centre)")


def caption_scene(text: str) -> set[tuple[str, str, str, int]]:
    """The things a caption names: (size, colour, shape, cell)."""
    return {(size, colour, shape, W.POSITIONS.index(where)) for size, colour, shape, where in THING.findall(text)}


def _world(raw: Path) -> dict:
    return json.loads((raw / "world.json").read_text())["scenes"]


def _eval_scenes(raw: Path) -> dict[str, list[dict]]:
    return json.loads((raw / "eval" / "scenes.json").read_text())


def _questions(raw: Path, name: str) -> list[dict]:
    ev = raw / "eval"
    return readers.read_vqa(ev / f"{name}_questions.json", ev / f"{name}_annotations.json")


def _template(question: str) -> str:
    """A question with its colour and shape words replaced by slots."""
    for colour in W.COLOURS + W.CAPTION_COLOURS:
        question = re.sub(rf"\b{colour}\b", "{colour}", question)
    for shape in W.SHAPES:
        question = re.sub(rf"\b{shape}\b", "{shape}", question)
    for position in W.POSITIONS:
        question = re.sub(rf"\b{position}\b", "{position}", question)
    return question


def _slot_clashes(eval_phrases: dict[str, str], ft_phrases: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """(evaluation phrasing, two words) where an evaluation phrasing ends in a plain word after the
    two words that come before the closing slot of another kind's fine-tuning phrasing: a model
    taught "... in the {position}?" reads "... in the image?" as a question about a place."""
    def words(t: str) -> list[str]:
        return re.findall(r"\{\w+\}|\w+", t)

    clashes = []
    for kind, phrase in eval_phrases.items():
        endings = {tuple(w[-3:-1]) for k, ps in ft_phrases.items() if k != kind for p in ps
                   for w in [words(p)] if w[-1].startswith("{")}
        w = words(phrase)
        if tuple(w[-3:-1]) in endings and not w[-1].startswith("{"):
            clashes.append((phrase, " ".join(w[-3:-1])))
    return clashes


@pytest.fixture(scope="module")
def big_world(tmp_path_factory) -> Path:
    """A world large enough for its statistics to mean something (about a second)."""
    out = tmp_path_factory.mktemp("big") / "raw"
    W.write_world(small_world_params(n_images=600, n_instruct=600, n_eval=200), SEED, out)
    return out


def test_captions_name_every_thing_of_the_image(small_world):
    scene = W.Scene((W.Thing("yellow", "cross", "small", 0), W.Thing("purple", "circle", "big", 4)))
    for template in W.CAPTIONS:
        text = W.describe(scene, template, np.random.default_rng(0))
        assert text == text.lower() and text.endswith(".")
        assert caption_scene(text) == {("small", "yellow", "cross", 0), ("big", "purple", "circle", 4)}
    for record in _lines(small_world / "captions.jsonl"):
        things = caption_scene(record["caption"])
        assert 1 <= len(things) <= W.MAX_OBJECTS and len({t[3] for t in things}) == len(things)


def test_training_images_never_show_a_held_out_kind_or_layout(big_world):
    """Derived from the captions (which name every thing) and world.json: the colour-shape
    combinations and the layouts evaluation keeps for itself appear in no training image, and every
    evaluation scene has a held-out layout; some show a held-out combination."""
    world = _world(big_world)
    held_kinds = {tuple(k) for k in world["held_out_kinds"]}
    held_layouts = {tuple(lay) for lay in world["eval_layouts"]}
    train_kinds, train_layouts = set(), set()
    for record in _lines(big_world / "captions.jsonl"):
        things = caption_scene(record["caption"])
        train_kinds |= {(c, s) for _, c, s, _ in things}
        train_layouts.add(tuple(sorted(cell for *_, cell in things)))
    assert held_kinds and not train_kinds & held_kinds
    assert held_layouts and not train_layouts & held_layouts
    assert {k for k in W.TRAIN_KINDS} == train_kinds  # every other combination is trained
    eval_scenes = _eval_scenes(big_world)
    assert all(tuple(sorted(t["cell"] for t in things)) in held_layouts for things in eval_scenes.values())
    shown = sum(any((t["colour"], t["shape"]) in held_kinds for t in things) for things in eval_scenes.values())
    assert shown > len(eval_scenes) / 4


def test_caption_only_colours_are_never_in_a_conversation_or_the_corpus(big_world):
    instruct = (big_world / "instruct.json").read_text()
    corpus = (big_world / "text.jsonl").read_text()
    captions = (big_world / "captions.jsonl").read_text()
    for colour in W.CAPTION_COLOURS:
        assert not re.search(rf"\b{colour}\b", instruct) and not re.search(rf"\b{colour}\b", corpus)
        assert re.search(rf"\b{colour}\b", captions)
    items = readers.read_mc(big_world / "eval" / "caption_only.jsonl", image=True)
    scenes = json.loads((big_world / "eval" / "scenes.json").read_text())
    assert len(items) == 200 and len({it["image"] for it in items}) == 200  # an image per question
    truth = Counter()
    for it in items:
        shown = {(t["colour"], t["shape"], t["size"]) for t in scenes[f"images/{it['image'].name}"]}
        size = it["stem"].removeprefix("a ")
        options = [tuple(c.split()) for c in it["choices"]]
        # the two continuations differ in the caption-only colour only; the true one is shown at
        # the stem's size, and no thing of the other colour has that shape
        assert {c for c, _ in options} == set(W.CAPTION_COLOURS) and len({s for _, s in options}) == 1
        (colour, shape), (other, _) = options[it["answer"]], options[1 - it["answer"]]
        assert (colour, shape, size) in shown and not any(t[:2] == (other, shape) for t in shown)
        truth[colour] += 1
    assert truth["purple"] == truth["pink"] == 100  # the true colour balanced: a blind model is at chance


def test_evaluation_phrasings_are_not_fine_tunings(big_world):
    """No evaluation question is a fine-tuning question, nor its template (colour and shape words
    as slots); fine-tuning teaches every kind in phrasings of its own."""
    turns = [t["value"].removeprefix("<image>\n") for c in readers.read_llava(big_world / "instruct.json")
             for t in c["conversations"] if t["from"] == "human"]
    ft, ft_templates = set(turns), {_template(t) for t in turns}
    asked = [it["question"] for it in _questions(big_world, "vqa")]
    asked += [r["text"] for name in (f"pope_{s}" for s in W.POPE_SPLITS)
              for r in _lines(big_world / "eval" / f"{name}.jsonl")]
    assert asked and not set(asked) & ft
    assert not {_template(q) for q in asked} & ft_templates
    assert {t for phrases in W.FT_PHRASES.values() for t in phrases} <= ft_templates  # every one is used


def test_no_evaluation_phrasing_reads_like_another_kinds_question():
    """Measured on world v2 (docs/world.md): fine-tuning that asked "... the thing in the {position}?"
    broke every evaluation phrasing ending "in the image?" (count 0.96 -> 0.00, POPE all "yes").
    So no evaluation phrasing may put a plain word where another kind's fine-tuning puts a slot."""
    assert _slot_clashes(W.EVAL_PHRASES, W.FT_PHRASES) == []
    clashing = {**W.FT_PHRASES, "position": ("what colour is the thing in the {position}?",)}
    assert ("how many {colour} shapes are in the image?", "in the") in _slot_clashes(
        {**W.EVAL_PHRASES, "count": "how many {colour} shapes are in the image?"}, clashing)


def test_instruction_answers_are_true_of_their_image(small_world):
    convs = readers.read_llava(small_world / "instruct.json")
    captions = {r["image"]: caption_scene(r["caption"]) for r in _lines(small_world / "captions.jsonl")}
    teachers = {c["name"]: c["facts"] for c in _creatures(small_world) if c["group"] == "instruct"}
    assert sum("image" not in c for c in convs) == 15
    kinds_seen = set()
    for conv in convs:
        turns = conv["conversations"]
        pairs = [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns), 2)]
        assert 1 <= len(pairs) <= 3 or "image" in conv
        asked_kinds = []
        if "image" not in conv:
            for q, a in pairs:
                name = re.search(r"the (\w+)", q).group(1)
                assert name in teachers and a in teachers[name].values()
            continue
        assert pairs[0][0].startswith("<image>\n")
        things = captions[conv["image"]]
        for q, a in pairs:
            template = _template(q.removeprefix("<image>\n"))
            kind = next(k for k, phrases in W.FT_PHRASES.items() if template in phrases)
            kinds_seen.add(kind)
            asked_kinds.append(kind)
            colour = next((c for c in W.COLOURS if re.search(rf"\b{c}\b", q)), None)
            shape = next((s for s in W.SHAPES if re.search(rf"\b{s}\b", q)), None)
            if kind == "colour":
                assert [c for _, c, s, _ in things if s == shape] == [a]
            elif kind == "shape":
                assert [s for _, c, s, _ in things if c == colour] == [a]
            elif kind == "count":
                assert a == str(sum(c == colour for _, c, _, _ in things))
            elif kind == "position":  # the colour of the thing at a place
                position = next(p for p in W.POSITIONS if re.search(rf"\b{p}\b", q))
                assert [c for _, c, _, k in things if W.POSITIONS[k] == position] == [a]
            else:
                assert a == ("yes" if any((c, s) == (colour, shape) for _, c, s, _ in things) else "no")
        assert len(asked_kinds) == len(set(asked_kinds)) and "exists" in asked_kinds  # one question per kind
    assert kinds_seen == set(W.FT_PHRASES)


def test_fine_tuning_counts_are_not_nearly_all_one(big_world):
    """Distinct kinds seldom share a colour: without colour groups in the training scenes nearly
    every count answer would be 1 and a model could score by always saying 1."""
    counts = Counter(t["value"] for c in readers.read_llava(big_world / "instruct.json") if "image" in c
                     for q, t in zip(c["conversations"][::2], c["conversations"][1::2], strict=True)
                     if _template(q["value"].removeprefix("<image>\n")) in W.FT_PHRASES["count"])
    assert set(counts) == {"1", "2", "3"} and min(counts.values()) > 0.15 * sum(counts.values())


# ---- honesty of the evaluation sets -------------------------------------------------------------

def test_vqa_answers_are_true_balanced_within_each_kind_and_absent_from_the_question(big_world):
    scenes = _eval_scenes(big_world)
    by_kind = defaultdict(list)
    for it in _questions(big_world, "vqa"):
        assert it["answers"] == [it["multiple_choice_answer"]] * 10
        a, q = it["multiple_choice_answer"], it["question"]
        things = scenes[W.image_name(it["image_id"])]
        kind = next(k for k in W.VQA_KINDS if _template(q) == W.EVAL_PHRASES[k])
        by_kind[kind].append(a)
        assert not re.search(rf"\b{a}\b", q)
        colour = next((c for c in W.COLOURS if re.search(rf"\b{c}\b", q)), None)
        shape = next((s for s in W.SHAPES if re.search(rf"\b{s}\b", q)), None)
        if kind == "colour":
            assert [t["colour"] for t in things if t["shape"] == shape] == [a]
        elif kind == "shape":
            assert [t["shape"] for t in things if t["colour"] == colour] == [a]
        elif kind == "count":
            assert a == str(sum(t["colour"] == colour for t in things)) and len(things) > int(a)
        else:
            position = next(p for p in W.POSITIONS if re.search(rf"\b{p}\b", q))
            assert [t["colour"] for t in things if W.POSITIONS[t["cell"]] == position] == [a]
    assert set(by_kind) == set(W.VQA_KINDS) and max(map(len, by_kind.values())) - min(map(len, by_kind.values())) <= 1
    for kind, answers in by_kind.items():
        assert _is_balanced(answers, W.VISION_ANSWERS[kind]), kind
    chance = json.loads((big_world / "eval" / "tasks.json").read_text())["vqa"]["chance"]
    assert chance == pytest.approx((1 / 4 + 1 / 4 + 1 / 3 + 1 / 4) / 4, abs=1e-6)


def test_pope_splits_ask_every_probe_as_often_yes_as_no_and_pick_negatives_as_pope_does(big_world):
    """Labels are true of the image; per split and question text, as many "yes" as "no" (an image-blind
    model is at chance); "no" probes are absent kinds picked at random, the most frequent in the training
    images (popular), or the one most often beside the image's kinds there (adversarial), all counted
    from the captions."""
    scenes = _eval_scenes(big_world)
    single, pairs = Counter(), Counter()
    for record in _lines(big_world / "captions.jsonl"):
        kinds = {(c, s) for _, c, s, _ in caption_scene(record["caption"])}
        single.update(kinds)
        pairs.update((a, b) for a in kinds for b in kinds if a != b)
    negatives = {}
    for split in W.POPE_SPLITS:
        records = _lines(big_world / "eval" / f"pope_{split}.jsonl")
        labels = defaultdict(list)
        negatives[split] = Counter()
        for r in records:
            colour, shape = re.fullmatch(r"is there a (\w+) (\w+) in the image\?", r["text"]).groups()
            kinds = {(t["colour"], t["shape"]) for t in scenes[r["image"]]}
            assert (r["label"] == "yes") == ((colour, shape) in kinds) and r["split"] == split
            labels[r["text"]].append(r["label"])
            if r["label"] == "no":
                negatives[split][(colour, shape)] += 1
                absent = [k for k in W.TAUGHT_KINDS if k not in kinds]
                if split == "popular":
                    assert single[(colour, shape)] == max(single[k] for k in absent)
                elif split == "adversarial":
                    near = {k: sum(pairs[(s, k)] for s in kinds) for k in absent}
                    assert near[(colour, shape)] == max(near.values())
        assert all(v.count("yes") == v.count("no") for v in labels.values()), split
        assert sum(v.count("yes") for v in labels.values()) == 100
    # the splits differ: popular and adversarial concentrate on a few kinds, random spreads out
    assert len(negatives["random"]) > len(negatives["adversarial"]) >= len(negatives["popular"])


def test_vqa_and_pope_scenes_come_from_their_generators():
    world = W.SceneWorld.make(3)
    rng = np.random.default_rng(1)
    for _, _, _, scene in W.make_vqa(rng, world, 40):
        assert scene.layout in world.eval_layouts and 2 <= len(scene.things) <= W.MAX_OBJECTS
        assert len(scene.kinds) == len(scene.things)  # distinct kinds
    single, pairs = W.kind_statistics([W.train_scene(rng, world) for _ in range(200)])
    items = W.make_pope(rng, world, 40, "adversarial", single, pairs)
    assert Counter(label for _, label, _ in items) == {"yes": 20, "no": 20}


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
    creatures = W.make_creatures(W.child_rng(7, "creatures"), 3, 1)
    corpus = " ".join(W.make_corpus(W.child_rng(7, "corpus"), creatures, n, W.SceneWorld.make(7)))
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

RENDER_SIZE = 144  # 48-pixel cells: fine enough to measure sizes and shapes to a pixel
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
    """Every colour x shape x size at least once, every cell, one to MAX_OBJECTS things a scene."""
    combos = list(product(W.COLOURS + W.CAPTION_COLOURS, W.SHAPES, W.SIZES))
    scenes, start, cell = [], 0, 0
    for n in itertools.cycle(range(1, W.MAX_OBJECTS + 1)):
        if start >= len(combos):
            return scenes
        scenes.append(W.Scene(tuple(W.Thing(c, s, size, (cell + j) % 9)
                                    for j, (c, s, size) in enumerate(combos[start:start + n]))))
        start, cell = start + n, cell + n


def _cell_slice(k: int, cell: int) -> tuple[slice, slice]:
    """The pixels of grid cell `k`, located by its name in POSITIONS (not by render's arithmetic)."""
    name = W.POSITIONS[k]
    row = 0 if "top" in name else 2 if "bottom" in name else 1
    col = 0 if "left" in name else 2 if "right" in name else 1
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


def test_the_colours_are_far_apart():
    """Colour jitter is +-15 per channel: any two colours differ by more than twice that in some channel."""
    for a, b in combinations(W.RGB, 2):
        assert np.abs(np.array(W.RGB[a]) - np.array(W.RGB[b])).max() > 60, (a, b)


def test_rendered_pixels_show_the_scene():
    scenes = _scenes_covering_every_attribute()
    things = [t for s in scenes for t in s.things]
    every = set(product(W.COLOURS + W.CAPTION_COLOURS, W.SHAPES, W.SIZES))
    assert {(t.colour, t.shape, t.size) for t in things} == every
    assert {t.cell for t in things} == set(range(9)) and {len(s.things) for s in scenes} >= {1, 2, 3}
    cell = RENDER_SIZE // W.GRID
    background = np.array(W.BACKGROUND)
    for i, scene in enumerate(scenes):
        img = W.render(scene, RENDER_SIZE, np.random.default_rng(i))
        assert img.size == (RENDER_SIZE, RENDER_SIZE) and img.mode == "RGB"
        pixels = np.asarray(img).astype(int)
        # Background noise is +-10 per channel, an object's colour jitter +-15; no antialiasing.
        is_background = np.abs(pixels - background).max(-1) <= 10
        at = {t.cell: t for t in scene.things}
        for k in range(len(W.POSITIONS)):
            rows, cols = _cell_slice(k, cell)
            if k not in at:
                assert is_background[rows, cols].all(), f"{scene}: object pixels in the empty cell {W.POSITIONS[k]}"
                continue
            t = at[k]
            patch = pixels[rows, cols]
            obj = np.abs(patch - np.array(W.RGB[t.colour])).max(-1) <= 15
            assert (obj | is_background[rows, cols]).all(), f"{t}: pixels of neither the background nor {t.colour}"
            ys, xs = np.nonzero(obj)
            assert len(ys), f"{scene}: no object in {W.POSITIONS[k]}"
            box = obj[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            h, w = box.shape
            lo, hi = W.SIZE_FRACTION[t.size]
            for extent in (h, w):  # the drawn box is side +- 1 pixels
                assert lo * cell - 1 <= extent <= hi * cell + 1, (t, extent / cell)
            fill_range, top_range = SHAPE_SIGNATURE[t.shape]
            fill, top = box.mean(), box[: h // 2].sum() / box.sum()
            assert fill_range[0] <= fill <= fill_range[1], (t, fill)
            assert top_range[0] <= top <= top_range[1], (t, top)
