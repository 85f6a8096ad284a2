"""The embedded synthetic world (docs/world.md): everything the default run trains and is scored on.

Rendered images of shapes with captions, a text corpus about fictional creatures whose facts no
image shows, LLaVA-style instruction conversations and held-out evaluation sets, all generated from
`seed` and the `prepare` params. Each product draws from its own generator, so e.g. changing
`n_eval` leaves the training images untouched, and the same params give byte-identical files.

Honesty by construction: a vision question's text is the same whatever the image shows and its
answers are balanced per question text, so an image-blind model is at chance; a creature fact is
assigned at random from a balanced vocabulary and is stated only in the text corpus.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageDraw

from vlm.config import PrepareConfig
from vlm.io import atomic_dir

T = TypeVar("T")

SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "big")
COUNTS = (1, 2, 3)
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # cells of the 2x2 grid
RGB = {"red": (220, 50, 40), "green": (40, 190, 70), "blue": (50, 100, 235), "yellow": (235, 215, 40)}
BACKGROUND = (24, 24, 32)
SIZE_FRACTION = {"small": (0.5, 0.6), "big": (0.85, 0.95)}  # object side as a share of a cell

# Vision question kinds and their answer vocabularies; "exists" is the POPE-style yes/no probe.
VISION_QUESTIONS = {
    "colour": "what colour are the shapes?",
    "shape": "what shape is shown?",
    "count": "how many shapes are there?",
    "size": "what size are the shapes?",
}
VISION_ANSWERS = {"colour": COLOURS, "shape": SHAPES, "count": ("1", "2", "3"), "size": SIZES}
EXISTS_QUESTION = "is there a {colour} {shape} in the image?"
VQA_ANSWER_TYPES = {"colour": "other", "shape": "other", "count": "number", "size": "other"}

ATTRIBUTES = {
    "food": ("honey", "fish", "seeds", "berries", "nuts", "grass", "bread", "apples"),
    "home": ("forest", "river", "cave", "desert", "mountain", "swamp", "meadow", "island"),
    "fear": ("thunder", "snakes", "fire", "darkness", "rain", "owls", "wolves", "bees"),
}
QUESTIONS = {
    "food": "what does the {name} eat?",
    "home": "where does the {name} live?",
    "fear": "what is the {name} afraid of?",
}
QA_TEMPLATE = "question: {question} answer: {value}."
FACT_TEMPLATES = {
    "food": ("the {name} eats {value}.", "the favourite food of the {name} is {value}.",
             "every morning the {name} looks for {value} to eat.", QA_TEMPLATE),
    "home": ("the {name} lives near the {value}.", "the home of the {name} is the {value}.",
             "you can find the {name} close to the {value}.", QA_TEMPLATE),
    "fear": ("the {name} is afraid of {value}.", "the {name} runs away from {value}.",
             "nothing scares the {name} more than {value}.", QA_TEMPLATE),
}
N_TEMPLATES = 4  # per fact; every fact appears in every template once the corpus is large enough

CAPTIONS = (
    "{n} {size} {colour} {noun}{where}.",
    "a picture of {n} {size} {colour} {noun}{where}.",
    "{n} {colour} {noun}{where}{all}.",
    "there {be} {n} {size} {colour} {noun}{where}.",
    "an image of {n} {colour} {noun}{where} on a dark background. {they} {size}.",
)
# Scene sentences of the text corpus: the caption language plus the words the questions use.
SCENE_SENTENCES = CAPTIONS + (
    "in this picture the {noun} {be} {colour} and {size}.",
    "the colour of the {noun} is {colour}, and there {be} {n} of them.",
)

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gl", "sk", "tr")
VOWELS = ("a", "e", "i", "o", "u")
CODAS = ("", "", "l", "n", "r", "x", "m")


@dataclass(frozen=True)
class Scene:
    """What one image shows: `count` copies of one object kind in distinct grid cells."""

    shape: str
    colour: str
    size: str
    count: int
    cells: tuple[int, ...]

    def answer(self, kind: str) -> str:
        return str(self.count) if kind == "count" else getattr(self, kind)


@dataclass(frozen=True)
class Creature:
    name: str
    group: str  # "instruct" (facts also in text-only instructions) or "eval" (text corpus only)
    facts: dict[str, str]


def child_rng(seed: int, product: str) -> np.random.Generator:
    """An independent generator per product, stable whatever the other products draw."""
    return np.random.default_rng([seed, zlib.crc32(product.encode())])


def balanced(rng: np.random.Generator, values: Sequence[T], n: int) -> list[T]:
    """`n` draws in random order that use every value equally often (counts differ by at most 1)."""
    passes = -(-n // len(values))
    pool = [values[i] for _ in range(passes) for i in rng.permutation(len(values))][:n]
    return [pool[i] for i in rng.permutation(n)]


def _pick(rng: np.random.Generator, values: Sequence[T]) -> T:
    return values[int(rng.integers(len(values)))]


# ---- images and captions -------------------------------------------------------------------------

def random_scene(rng: np.random.Generator, **fixed: Any) -> Scene:
    """A scene with attributes drawn uniformly and independently, except those given in `fixed`."""
    count = int(fixed.get("count") or _pick(rng, COUNTS))
    attrs = {
        "shape": fixed.get("shape") or _pick(rng, SHAPES),
        "colour": fixed.get("colour") or _pick(rng, COLOURS),
        "size": fixed.get("size") or _pick(rng, SIZES),
    }
    cells = tuple(sorted(int(c) for c in rng.choice(len(POSITIONS), size=count, replace=False)))
    return Scene(count=count, cells=cells, **attrs)


def render(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the scene on a dark, slightly noisy background; colours and placement jitter a little."""
    noise = rng.integers(-10, 11, size=(size, size, 3))
    img = Image.fromarray(np.clip(np.array(BACKGROUND) + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    fill = tuple(int(v) for v in np.clip(np.array(RGB[scene.colour]) + rng.integers(-15, 16, 3), 0, 255))
    cell = size / 2
    lo, hi = SIZE_FRACTION[scene.size]
    for k in scene.cells:
        side = cell * rng.uniform(lo, hi)
        slack = (cell - side) / 4
        cx = (k % 2 + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (k // 2 + 0.5) * cell + rng.uniform(-slack, slack)
        _draw_shape(draw, scene.shape, cx, cy, side, fill)
    return img


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float, fill) -> None:
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    x1, y1 = round(cx + side / 2) - 1, round(cy + side / 2) - 1
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # cross: a plus sign a third of the side thick
        half, mx, my = max(1, round(side / 6)), round(cx), round(cy)
        draw.rectangle([x0, my - half, x1, my + half - 1], fill=fill)
        draw.rectangle([mx - half, y0, mx + half - 1, y1], fill=fill)


def describe(scene: Scene, template: str) -> str:
    """Fill a caption-language template; the position is named only for a single object."""
    many = scene.count > 1
    return template.format(
        n=COUNT_WORDS[scene.count],
        size=scene.size,
        colour=scene.colour,
        noun=PLURALS[scene.shape] if many else scene.shape,
        where="" if many else f" in the {POSITIONS[scene.cells[0]]}",
        be="are" if many else "is",
        they="they are" if many else "it is",
        all=f", all of them {scene.size}" if many else f", and it is {scene.size}",
    )


def caption(scene: Scene, rng: np.random.Generator) -> str:
    return describe(scene, _pick(rng, CAPTIONS))


# ---- creatures and the text corpus ---------------------------------------------------------------

def make_creatures(rng: np.random.Generator, n: int, n_instruct: int) -> list[Creature]:
    """Unique syllable names; facts balanced over each vocabulary within each group, at random."""
    taken = {w for vocab in ATTRIBUTES.values() for w in vocab}
    names: list[str] = []
    while len(names) < n:
        name = "".join(_pick(rng, ONSETS) + _pick(rng, VOWELS) + _pick(rng, CODAS) for _ in range(2))
        if name not in taken:
            taken.add(name)
            names.append(name)
    creatures = []
    for group, members in (("instruct", names[:n_instruct]), ("eval", names[n_instruct:])):
        values = {attr: balanced(rng, vocab, len(members)) for attr, vocab in ATTRIBUTES.items()}
        for i, name in enumerate(members):
            creatures.append(Creature(name, group, {attr: values[attr][i] for attr in ATTRIBUTES}))
    return creatures


def question(creature: Creature, attr: str) -> str:
    return QUESTIONS[attr].format(name=creature.name)


def fact_sentence(creature: Creature, attr: str, template: int) -> str:
    value = creature.facts[attr]
    return FACT_TEMPLATES[attr][template].format(name=creature.name, value=value,
                                                 question=question(creature, attr))


def _fact_stream(rng: np.random.Generator, creatures: list[Creature]) -> Iterator[str]:
    """Deal facts round-robin (a fresh shuffle per pass); each fact cycles through its templates."""
    facts = [(c, attr) for c in creatures for attr in ATTRIBUTES]
    offsets = rng.integers(N_TEMPLATES, size=len(facts))
    seen = np.zeros(len(facts), dtype=int)
    while True:
        for i in rng.permutation(len(facts)):
            creature, attr = facts[i]
            yield fact_sentence(creature, attr, int((offsets[i] + seen[i]) % N_TEMPLATES))
            seen[i] += 1


def make_corpus(rng: np.random.Generator, creatures: list[Creature], n_docs: int) -> list[str]:
    """Documents of 3-6 sentences: >= 2 creature facts mixed with >= 1 scene description."""
    facts = _fact_stream(rng, creatures)
    docs = []
    for _ in range(n_docs):
        n_sent = int(rng.integers(3, 7))
        n_facts = int(rng.integers(2, n_sent))
        sentences = [next(facts) for _ in range(n_facts)]
        for _ in range(n_sent - n_facts):
            sentences.append(describe(random_scene(rng), _pick(rng, SCENE_SENTENCES)))
        docs.append(" ".join(sentences[i] for i in rng.permutation(n_sent)))
    return docs


# ---- instruction conversations -------------------------------------------------------------------

def other_kind(rng: np.random.Generator, colour: str, shape: str, differ: str) -> tuple[str, str]:
    """A (colour, shape) that differs from the given one in "colour", "shape" or "both"."""
    if differ in ("colour", "both"):
        colour = _pick(rng, [c for c in COLOURS if c != colour])
    if differ in ("shape", "both"):
        shape = _pick(rng, [s for s in SHAPES if s != shape])
    return colour, shape


def exists_probe(rng: np.random.Generator, scene: Scene, present: bool) -> str:
    """Ask about the scene's own object kind (`present`) or one differing in colour, shape or both."""
    colour, shape = scene.colour, scene.shape
    if not present:
        colour, shape = other_kind(rng, colour, shape, _pick(rng, ("colour", "shape", "both")))
    return EXISTS_QUESTION.format(colour=colour, shape=shape)


def _turns(pairs: list[tuple[str, str]], image: bool) -> list[dict[str, str]]:
    turns = []
    for i, (q, a) in enumerate(pairs):
        turns.append({"from": "human", "value": f"<image>\n{q}" if image and i == 0 else q})
        turns.append({"from": "gpt", "value": a})
    return turns


def vision_conversation(rng: np.random.Generator, scene: Scene) -> list[dict[str, str]]:
    """1-3 questions of distinct kinds about one image, with short answers."""
    kinds = (*VISION_QUESTIONS, "exists")
    pairs = []
    for k in rng.choice(len(kinds), size=int(rng.integers(1, 4)), replace=False):
        kind = kinds[int(k)]
        if kind == "exists":
            present = bool(rng.random() < 0.5)
            pairs.append((exists_probe(rng, scene, present), "yes" if present else "no"))
        else:
            pairs.append((VISION_QUESTIONS[kind], scene.answer(kind)))
    return _turns(pairs, image=True)


def text_conversation(rng: np.random.Generator, creature: Creature) -> list[dict[str, str]]:
    """1-3 questions about one instruction creature's facts; answers are the bare values."""
    attrs = list(ATTRIBUTES)
    chosen = rng.choice(len(attrs), size=int(rng.integers(1, 4)), replace=False)
    return _turns([(question(creature, attrs[int(a)]), creature.facts[attrs[int(a)]]) for a in chosen], False)


def make_instructions(rng: np.random.Generator, cfg: PrepareConfig, scenes: list[Scene],
                      creatures: list[Creature]) -> list[dict]:
    teachers = [c for c in creatures if c.group == "instruct"]
    convs: list[dict] = []
    for _ in range(cfg.n_instruct - cfg.n_text_instruct):
        i = int(rng.integers(len(scenes)))
        convs.append({"image": image_name(i), "conversations": vision_conversation(rng, scenes[i])})
    for _ in range(cfg.n_text_instruct):
        convs.append({"conversations": text_conversation(rng, _pick(rng, teachers))})
    return [{"id": f"{n:06d}", **convs[int(i)]} for n, i in enumerate(rng.permutation(len(convs)))]


def image_name(i: int) -> str:
    return f"images/{i:06d}.png"


# ---- held-out evaluation -------------------------------------------------------------------------

def make_vqa(rng: np.random.Generator, n: int) -> list[tuple[str, str, Scene]]:
    """(kind, answer, scene) per question: kinds balanced, answers balanced within each kind."""
    kinds = balanced(rng, list(VISION_QUESTIONS), n)
    answers = {k: iter(balanced(rng, VISION_ANSWERS[k], kinds.count(k))) for k in VISION_QUESTIONS}
    out = []
    for kind in kinds:
        answer = next(answers[kind])
        out.append((kind, answer, random_scene(rng, **{kind: answer})))
    return out


def make_pope(rng: np.random.Generator, n: int) -> list[tuple[str, str, Scene]]:
    """(question, label, scene): each probe is asked once of an image with it and once without."""
    probes = balanced(rng, [(c, s) for c in COLOURS for s in SHAPES], -(-n // 2))
    differs = balanced(rng, ("colour", "shape", "both"), len(probes))
    out = []
    for (colour, shape), differ in zip(probes, differs, strict=True):
        text = EXISTS_QUESTION.format(colour=colour, shape=shape)
        out.append((text, "yes", random_scene(rng, colour=colour, shape=shape)))
        other_colour, other_shape = other_kind(rng, colour, shape, differ)
        out.append((text, "no", random_scene(rng, colour=other_colour, shape=other_shape)))
    return [out[int(i)] for i in rng.permutation(len(out))[:n]]


def make_text_mc(rng: np.random.Generator, creatures: list[Creature], n: int) -> list[dict]:
    """ARC-style questions about evaluation creatures only; 4 options, answer position balanced."""
    facts = balanced(rng, [(c, attr) for c in creatures if c.group == "eval" for attr in ATTRIBUTES], n)
    positions = balanced(rng, range(4), n)
    records = []
    for i, ((creature, attr), pos) in enumerate(zip(facts, positions, strict=True)):
        answer = creature.facts[attr]
        options = [v for v in ATTRIBUTES[attr] if v != answer]
        options = [options[int(j)] for j in rng.choice(len(options), size=3, replace=False)]
        options.insert(pos, answer)
        choices = [{"label": "ABCD"[j], "text": t} for j, t in enumerate(options)]
        records.append({"id": f"text_mc-{i:05d}", "answerKey": "ABCD"[pos],
                        "question": {"stem": question(creature, attr), "choices": choices}})
    return records


def vqa_chance(kinds: Sequence[str]) -> float:
    """Accuracy of the best answer-blind guesser: answers are balanced within each kind."""
    return sum(1 / len(VISION_ANSWERS[k]) for k in kinds) / len(kinds)


# ---- writing ------------------------------------------------------------------------------------

def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, records: Sequence[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8")


def _save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG")  # no metadata chunks: same pixels, same bytes


def _write_eval(cfg: PrepareConfig, seed: int, creatures: list[Creature], out: Path) -> dict[str, int]:
    (out / "images").mkdir(parents=True)
    vqa_rng, pope_rng = child_rng(seed, "eval-vqa"), child_rng(seed, "eval-pope")
    vqa = make_vqa(vqa_rng, cfg.n_eval)
    questions, annotations = [], []
    for qid, (kind, answer, scene) in enumerate(vqa):
        _save_png(render(scene, cfg.image_size, vqa_rng), out / image_name(qid))
        questions.append({"image_id": qid, "question": VISION_QUESTIONS[kind], "question_id": qid})
        annotations.append({
            "question_id": qid, "image_id": qid, "answer_type": VQA_ANSWER_TYPES[kind],
            "multiple_choice_answer": answer,
            "answers": [{"answer": answer, "answer_id": j} for j in range(1, 11)],
        })
    _write_json(out / "vqa_questions.json", {"questions": questions})
    _write_json(out / "vqa_annotations.json", {"annotations": annotations})

    pope = []
    for qid, (text, label, scene) in enumerate(make_pope(pope_rng, cfg.n_eval)):
        image_id = cfg.n_eval + qid  # after the VQA images, in the same folder
        _save_png(render(scene, cfg.image_size, pope_rng), out / image_name(image_id))
        pope.append({"question_id": qid, "image": image_name(image_id), "text": text, "label": label})
    _write_jsonl(out / "pope.jsonl", pope)

    text_mc = make_text_mc(child_rng(seed, "eval-text-mc"), creatures, cfg.n_eval)
    _write_jsonl(out / "text_mc.jsonl", text_mc)
    _write_json(out / "tasks.json", {
        "vqa": {"kind": "vqa", "questions": "vqa_questions.json", "annotations": "vqa_annotations.json",
                "image_dir": "images", "chance": round(vqa_chance([k for k, _, _ in vqa]), 6)},
        "pope": {"kind": "pope", "file": "pope.jsonl", "chance": 0.5},
        "text_mc": {"kind": "mc", "file": "text_mc.jsonl", "chance": 0.25},
    })
    return {"eval_vqa": len(questions), "eval_pope": len(pope), "eval_text_mc": len(text_mc)}


def world_knobs(cfg: PrepareConfig) -> dict:
    """The `prepare` params the world is made from (not those that select or read user files)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("source", "max_bad_fraction", "files")}


def _quiet(_: str) -> None:
    pass


def write_world(cfg: PrepareConfig, seed: int, out_dir: Path, log: Callable[[str], None] = _quiet) -> dict[str, int]:
    """Generate the world into `out_dir` (data/raw) atomically; returns the counts of each product."""
    creatures = make_creatures(child_rng(seed, "creatures"), cfg.n_creatures, cfg.n_instruct_creatures)
    scene_rng = child_rng(seed, "scenes")
    scenes = [random_scene(scene_rng) for _ in range(cfg.n_images)]
    with atomic_dir(out_dir) as tmp:
        log(f"rendering {cfg.n_images} images ({cfg.image_size}px) and captions")
        (tmp / "images").mkdir()
        render_rng, caption_rng = child_rng(seed, "render"), child_rng(seed, "captions")
        captions = []
        for i, scene in enumerate(scenes):
            _save_png(render(scene, cfg.image_size, render_rng), tmp / image_name(i))
            captions.append({"image": image_name(i), "caption": caption(scene, caption_rng)})
        _write_jsonl(tmp / "captions.jsonl", captions)

        log(f"writing {cfg.n_text_docs} text documents about {cfg.n_creatures} creatures")
        docs = make_corpus(child_rng(seed, "corpus"), creatures, cfg.n_text_docs)
        _write_jsonl(tmp / "text.jsonl", [{"text": d} for d in docs])

        log(f"writing {cfg.n_instruct} instruction conversations")
        convs = make_instructions(child_rng(seed, "instruct"), cfg, scenes, creatures)
        _write_json(tmp / "instruct.json", convs)

        log(f"writing the evaluation sets ({cfg.n_eval} questions per task)")
        counts = {
            "text_docs": len(docs), "images": len(scenes), "creatures": len(creatures),
            "instruct_vision": cfg.n_instruct - cfg.n_text_instruct, "instruct_text": cfg.n_text_instruct,
            **_write_eval(cfg, seed, creatures, tmp / "eval"),
        }
        _write_json(tmp / "world.json", {
            "config": {"seed": seed, **world_knobs(cfg)}, "counts": counts, "questions": QUESTIONS,
            "attributes": ATTRIBUTES,
            "creatures": [asdict(c) for c in creatures],
        })
    return counts
