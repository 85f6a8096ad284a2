"""The embedded synthetic world (docs/world.md): everything the default run trains and is scored on.

Rendered scenes of several objects on a 3 x 3 grid with captions, a text corpus about fictional
creatures whose facts no image shows, LLaVA-style instruction conversations and held-out
evaluation sets, all generated from `seed` and the `prepare` params. Each product draws from its
own generator, so e.g. changing `n_eval` leaves the training images untouched, and the same params
give byte-identical files.

Held out by construction (tests/test_world.py derives each from the files):
- evaluation scenes use layouts (sets of occupied cells) that no training image has, and their
  objects include colour-shape combinations no training image shows (HELD_OUT_KINDS);
- evaluation questions use phrasings that fine-tuning never uses (EVAL_PHRASES vs FT_PHRASES);
- the CAPTION_COLOURS appear in captions (and their images) only: never in a conversation or the
  text corpus, so only image-caption pre-training can teach them (the `caption_only` task);
- a creature fact of the evaluation group is stated only in the text corpus.
An image-blind model is at chance: every vision answer is balanced within its question kind, and
each POPE split asks as many "no" as "yes" questions.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageDraw

from vlm.config import PrepareConfig
from vlm.io import atomic_dir

T = TypeVar("T")

GRID = 3  # cells per side; an object fills part of one cell
POSITIONS = ("top left", "top middle", "top right", "middle left", "centre", "middle right", "bottom left",
             "bottom middle", "bottom right")
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COLOURS = ("red", "green", "blue", "yellow")  # the colours fine-tuning asks about
CAPTION_COLOURS = ("purple", "pink")  # in captions only: taught by image-caption data alone
RGB = {"red": (220, 50, 40), "green": (40, 190, 70), "blue": (50, 100, 235), "yellow": (235, 215, 40),
       "purple": (150, 60, 210), "pink": (250, 150, 200)}
SIZES = ("small", "big")
BACKGROUND = (24, 24, 32)
SIZE_FRACTION = {"small": (0.5, 0.6), "big": (0.85, 0.95)}  # object side as a share of a cell
MAX_OBJECTS = 4
N_OBJECTS_P = (0.15, 0.3, 0.3, 0.25)  # a training scene holds 1, 2, 3 or 4 objects
# One colour-shape combination per colour and per shape that no training image shows: evaluation
# asks about them (a model must bind colour and shape it has only seen apart).
HELD_OUT_KINDS = (("red", "cross"), ("green", "triangle"), ("blue", "circle"), ("yellow", "square"))
HELD_OUT_LAYOUTS = 0.2  # share of the multi-object layouts kept for evaluation
PARTNER_P = 0.5  # chance that a further object of a scene is the partner of one already there
GROUP_P = 0.5  # chance that 2-3 things of a training scene of 2 or more share a colour (counting)

# Vision questions: fine-tuning's phrasings and evaluation's own (never used in fine-tuning).
FT_PHRASES = {
    "colour": ("what colour is the {shape}?", "which colour is the {shape}?", "tell me the colour of the {shape}."),
    "shape": ("what shape is the {colour} object?", "which shape is {colour}?",
              "name the shape of the {colour} object."),
    "count": ("how many {colour} shapes are there?", "how many {colour} shapes do you see?",
              "count the {colour} shapes."),
    "position": ("what colour is the thing at the {position}?", "which colour has the object at the {position}?",
                 "at the {position}, which colour do you see?"),
    "exists": ("is there a {colour} {shape}?", "do you see a {colour} {shape}?",
               "does the picture show a {colour} {shape}?"),
}
EVAL_PHRASES = {
    "colour": "what is the colour of the {shape}?",
    "shape": "what is the shape of the {colour} object?",
    "count": "how many {colour} shapes are in the image?",
    "position": "which colour appears at the {position}?",
    "exists": "is there a {colour} {shape} in the image?",  # POPE's question
}
VQA_KINDS = ("colour", "shape", "count", "position")
VISION_ANSWERS = {"colour": COLOURS, "shape": SHAPES, "count": ("1", "2", "3"), "position": COLOURS}
VQA_ANSWER_TYPES = {"colour": "other", "shape": "other", "count": "number", "position": "other"}
POPE_SPLITS = ("random", "popular", "adversarial")

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

CAPTIONS = ("{objects}.", "a picture of {objects}.", "there is {objects}.",
            "an image of {objects} on a dark background.")
# Scene sentences of the text corpus: the caption language about scenes of the taught colours.
SCENE_SENTENCES = CAPTIONS + ("in this picture we see {objects}.",)

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gl", "sk", "tr")
VOWELS = ("a", "e", "i", "o", "u")
CODAS = ("", "", "l", "n", "r", "x", "m")


@dataclass(frozen=True)
class Thing:
    """One object of a scene."""

    colour: str
    shape: str
    size: str
    cell: int  # 0..8, row by row from the top left

    @property
    def kind(self) -> tuple[str, str]:
        return self.colour, self.shape


@dataclass(frozen=True)
class Scene:
    """What one image shows: up to MAX_OBJECTS things of distinct kinds in distinct cells."""

    things: tuple[Thing, ...]

    @property
    def layout(self) -> tuple[int, ...]:
        return tuple(sorted(t.cell for t in self.things))

    @property
    def kinds(self) -> set[tuple[str, str]]:
        return {t.kind for t in self.things}

    def to_json(self) -> list[dict]:
        return [asdict(t) for t in self.things]


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


# ---- the scene world: kinds, layouts, frequencies ----------------------------------------------

ALL_KINDS = tuple((c, s) for c in COLOURS + CAPTION_COLOURS for s in SHAPES)
TAUGHT_KINDS = tuple(k for k in ALL_KINDS if k[0] in COLOURS)  # what questions may ask about
TRAIN_KINDS = tuple(k for k in ALL_KINDS if k not in HELD_OUT_KINDS)


@dataclass(frozen=True)
class SceneWorld:
    """The seeded statistics every scene is drawn from: which layouts are held out for evaluation,
    how often each kind appears (some kinds are common, as in COCO) and which kind tends to appear
    beside which (its partner): what POPE's popular and adversarial splits probe."""

    train_layouts: tuple[tuple[int, ...], ...]
    eval_layouts: tuple[tuple[int, ...], ...]  # multi-object layouts no training image has
    weights: dict[tuple[str, str], float]  # relative frequency of each training kind
    partner: dict[tuple[str, str], tuple[str, str]]

    @classmethod
    def make(cls, seed: int) -> SceneWorld:
        rng = child_rng(seed, "scene-world")
        multi = [c for n in range(2, MAX_OBJECTS + 1) for c in itertools.combinations(range(GRID * GRID), n)]
        held = {multi[int(i)] for i in rng.permutation(len(multi))[:round(HELD_OUT_LAYOUTS * len(multi))]}
        # every cell in some held-out layout, so evaluation can ask about every position
        assert {c for lay in held for c in lay} == set(range(GRID * GRID)), "a cell no held-out layout covers"
        singles = [(c,) for c in range(GRID * GRID)]
        ranks = rng.permutation(len(TRAIN_KINDS))
        weights = {k: 1.0 / (1 + int(r)) ** 0.7 for k, r in zip(TRAIN_KINDS, ranks, strict=True)}
        order = [TRAIN_KINDS[int(i)] for i in rng.permutation(len(TRAIN_KINDS))]
        partner = {}
        for a, b in zip(order[0::2], order[1::2], strict=True):
            partner[a], partner[b] = b, a
        return cls(tuple(singles + [m for m in multi if m not in held]), tuple(m for m in multi if m in held),
                   weights, partner)

    def layouts(self, eval_: bool, n: int | None = None, cell: int | None = None) -> list[tuple[int, ...]]:
        pool = self.eval_layouts if eval_ else self.train_layouts
        return [lay for lay in pool if (n is None or len(lay) == n) and (cell is None or cell in lay)]

    def draw_kinds(self, rng: np.random.Generator, n: int, first: tuple[str, str] | None = None,
                   allowed: Sequence[tuple[str, str]] = TRAIN_KINDS,
                   given: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        """`n` distinct kinds (`given` ones first): by frequency, each further one the partner of one
        already drawn with probability PARTNER_P (when that partner is allowed and new)."""
        kinds = [first] if first else list(given)
        weights = np.array([self.weights.get(k, min(self.weights.values())) for k in allowed])
        while len(kinds) < n:
            partners = [self.partner[k] for k in kinds if k in self.partner and self.partner[k] in allowed
                        and self.partner[k] not in kinds]
            if partners and rng.random() < PARTNER_P:
                kinds.append(_pick(rng, partners))
                continue
            free = np.array([k not in kinds for k in allowed])
            p = weights * free
            kinds.append(allowed[int(rng.choice(len(allowed), p=p / p.sum()))])
        return kinds


def place(rng: np.random.Generator, kinds: Sequence[tuple[str, str]], layout: Sequence[int],
          first_cell: int | None = None) -> Scene:
    """Things of `kinds` on the cells of `layout` (the first on `first_cell` if given), random sizes."""
    cells = [int(c) for c in rng.permutation(list(layout))]
    if first_cell is not None:
        cells.remove(first_cell)
        cells.insert(0, first_cell)
    return Scene(tuple(Thing(c, s, _pick(rng, SIZES), cell) for (c, s), cell in zip(kinds, cells, strict=True)))


def train_scene(rng: np.random.Generator, world: SceneWorld) -> Scene:
    """1-4 things; with probability GROUP_P (when there is room) 2 or 3 of them share a taught colour,
    so fine-tuning's count answers are not nearly all "1" (distinct kinds rarely share a colour)."""
    n = int(rng.choice(MAX_OBJECTS, p=N_OBJECTS_P)) + 1
    layout = _pick(rng, world.layouts(False, n))
    if n < 2 or rng.random() >= GROUP_P:
        return place(rng, world.draw_kinds(rng, n), layout)
    colour = _pick(rng, COLOURS)
    shapes = [s for s in SHAPES if (colour, s) in TRAIN_KINDS]
    k = 2 if n == 2 else int(rng.choice([2, 3], p=[0.3, 0.7]))
    group = [(colour, shapes[int(i)]) for i in rng.choice(len(shapes), size=k, replace=False)]
    others = [kind for kind in TRAIN_KINDS if kind[0] != colour]
    return place(rng, world.draw_kinds(rng, n, allowed=others + group, given=group), layout)


# ---- images and captions -------------------------------------------------------------------------

def render(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the scene on a dark, slightly noisy background; colours and placement jitter a little."""
    noise = rng.integers(-10, 11, size=(size, size, 3))
    img = Image.fromarray(np.clip(np.array(BACKGROUND) + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    cell = size / GRID
    for t in scene.things:
        fill = tuple(int(v) for v in np.clip(np.array(RGB[t.colour]) + rng.integers(-15, 16, 3), 0, 255))
        lo, hi = SIZE_FRACTION[t.size]
        side = cell * rng.uniform(lo, hi)
        slack = (cell - side) / 4
        cx = (t.cell % GRID + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (t.cell // GRID + 0.5) * cell + rng.uniform(-slack, slack)
        _draw_shape(draw, t.shape, cx, cy, side, fill)
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


def describe(scene: Scene, template: str, rng: np.random.Generator) -> str:
    """Every thing of the scene, in random order: "a big red circle in the top left and ..."."""
    parts = [f"a {t.size} {t.colour} {t.shape} in the {POSITIONS[t.cell]}"
             for t in (scene.things[int(i)] for i in rng.permutation(len(scene.things)))]
    objects = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return template.format(objects=objects)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    return describe(scene, _pick(rng, CAPTIONS), rng)


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


def make_corpus(rng: np.random.Generator, creatures: list[Creature], n_docs: int, world: SceneWorld) -> list[str]:
    """Documents of 3-6 sentences: >= 2 creature facts mixed with >= 1 scene description (taught
    colours and training kinds only: the corpus never names a caption-only colour)."""
    facts = _fact_stream(rng, creatures)
    taught = tuple(k for k in TRAIN_KINDS if k[0] in COLOURS)
    docs = []
    for _ in range(n_docs):
        n_sent = int(rng.integers(3, 7))
        n_facts = int(rng.integers(2, n_sent))
        sentences = [next(facts) for _ in range(n_facts)]
        for _ in range(n_sent - n_facts):
            n = int(rng.integers(1, MAX_OBJECTS + 1))
            scene = place(rng, world.draw_kinds(rng, n, allowed=taught), _pick(rng, world.layouts(False, n)))
            sentences.append(describe(scene, _pick(rng, SCENE_SENTENCES), rng))
        docs.append(" ".join(sentences[i] for i in rng.permutation(n_sent)))
    return docs


# ---- instruction conversations -------------------------------------------------------------------

def _ask(rng: np.random.Generator, kind: str, phrases: dict, **slots: str) -> str:
    options = phrases[kind]
    return (options if isinstance(options, str) else _pick(rng, options)).format(**slots)


def answerable(scene: Scene, kind: str) -> list[tuple[dict[str, str], str]]:
    """Every (slots, answer) of question `kind` that `scene` answers unambiguously, about things of
    the taught colours only."""
    taught = [t for t in scene.things if t.colour in COLOURS]
    shapes = Counter(t.shape for t in scene.things)
    colours = Counter(t.colour for t in scene.things)
    if kind == "colour":
        return [({"shape": t.shape}, t.colour) for t in taught if shapes[t.shape] == 1]
    if kind == "shape":
        return [({"colour": t.colour}, t.shape) for t in taught if colours[t.colour] == 1]
    if kind == "count":
        return [({"colour": c}, str(colours[c])) for c in sorted({t.colour for t in taught}) if colours[c] <= 3]
    if kind == "position":
        return [({"position": POSITIONS[t.cell]}, t.colour) for t in taught]
    raise ValueError(kind)


def vision_conversation(rng: np.random.Generator, scene: Scene) -> list[dict[str, str]]:
    """One question of each kind the scene answers, in random order, in fine-tuning's phrasings,
    short answers: a multi-turn chat as in LLaVA's data ("exists" can always be asked)."""
    pairs = []
    for k in rng.permutation(len(VQA_KINDS) + 1):
        kind = (*VQA_KINDS, "exists")[int(k)]
        if kind == "exists":
            present = [t.kind for t in scene.things if t.colour in COLOURS]  # a list: a set's order is the hash seed's
            absent = [k for k in TRAIN_KINDS if k[0] in COLOURS and k not in scene.kinds]
            yes = bool(present) and rng.random() < 0.5
            colour, shape = _pick(rng, present if yes else absent)
            pairs.append((_ask(rng, "exists", FT_PHRASES, colour=colour, shape=shape), "yes" if yes else "no"))
        elif options := answerable(scene, kind):
            if kind == "count":  # the largest group half the time: 2s and 3s as often as 1s
                options = options if rng.random() < 0.5 else [max(options, key=lambda o: int(o[1]))]
            slots, ans = _pick(rng, options)
            pairs.append((_ask(rng, kind, FT_PHRASES, **slots), ans))
    return _turns(pairs, image=True)


def _turns(pairs: list[tuple[str, str]], image: bool) -> list[dict[str, str]]:
    turns = []
    for i, (q, a) in enumerate(pairs):
        turns.append({"from": "human", "value": f"<image>\n{q}" if image and i == 0 else q})
        turns.append({"from": "gpt", "value": a})
    return turns


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

def eval_scene(rng: np.random.Generator, world: SceneWorld, target: tuple[str, str], n: int,
               avoid: Callable[[tuple[str, str]], bool], cell: int | None = None,
               more: Sequence[tuple[str, str]] = ()) -> Scene:
    """A scene of a held-out layout of `n` things: `target` (on `cell` if given), the kinds `more`,
    and distractors of any kind (held-out ones included) for which `avoid` is false."""
    layout = _pick(rng, world.layouts(True, n, cell))
    kinds = [target, *more]
    pool = [k for k in ALL_KINDS if not avoid(k) and k not in kinds]
    kinds += [pool[int(i)] for i in rng.choice(len(pool), size=n - len(kinds), replace=False)]
    return place(rng, kinds, layout, cell)


def make_vqa(rng: np.random.Generator, world: SceneWorld, n: int, colours: Sequence[str] = COLOURS,
             kinds: Sequence[str] = VQA_KINDS) -> list[tuple[str, str, str, Scene]]:
    """(kind, question, answer, scene): kinds balanced, answers balanced within each kind, every
    scene of a held-out layout with 2-4 things; the asked-about thing of any `colours` kind."""
    chosen = balanced(rng, list(kinds), n)
    answers = {k: iter(balanced(rng, colours if k == "colour" else VISION_ANSWERS[k], chosen.count(k)))
               for k in kinds}
    out = []
    for kind in chosen:
        answer = next(answers[kind])
        size = int(rng.integers(2, MAX_OBJECTS + 1))
        if kind == "colour":
            shape = _pick(rng, SHAPES)
            scene = eval_scene(rng, world, (answer, shape), size, lambda k, s=shape: k[1] == s)
            q = EVAL_PHRASES["colour"].format(shape=shape)
        elif kind == "shape":
            colour = _pick(rng, colours)
            scene = eval_scene(rng, world, (colour, answer), size, lambda k, c=colour: k[0] == c)
            q = EVAL_PHRASES["shape"].format(colour=colour)
        elif kind == "count":
            colour, count = _pick(rng, colours), int(answer)
            shapes = [SHAPES[int(i)] for i in rng.choice(len(SHAPES), size=count, replace=False)]
            size = int(rng.integers(count + 1, MAX_OBJECTS + 1))  # at least one distractor of another colour
            scene = eval_scene(rng, world, (colour, shapes[0]), size, lambda k, c=colour: k[0] == c,
                               more=[(colour, s) for s in shapes[1:]])
            q = EVAL_PHRASES["count"].format(colour=colour)
        else:
            target, cell = (answer, _pick(rng, SHAPES)), int(rng.integers(len(POSITIONS)))
            size = _pick(rng, [m for m in range(2, MAX_OBJECTS + 1) if world.layouts(True, m, cell)])
            scene = eval_scene(rng, world, target, size, lambda k: False, cell=cell)
            q = EVAL_PHRASES["position"].format(position=POSITIONS[cell])
        out.append((kind, q, answer, scene))
    return out


def kind_statistics(scenes: Sequence[Scene]) -> tuple[Counter, Counter]:
    """How often each kind appears in `scenes`, and each ordered pair of kinds together."""
    single, pairs = Counter(), Counter()
    for scene in scenes:
        single.update(scene.kinds)
        pairs.update((a, b) for a in scene.kinds for b in scene.kinds if a != b)
    return single, pairs


def pope_negative(rng: np.random.Generator, split: str, scene: Scene, single: Counter, pairs: Counter) -> tuple:
    """A taught kind the scene does not show, as POPE picks it: at random; the most frequent in the
    training images (popular); the one seen most often beside the scene's kinds there (adversarial)."""
    absent = [k for k in TAUGHT_KINDS if k not in scene.kinds]
    if split == "random":
        return _pick(rng, absent)
    if split == "popular":
        score = {k: single[k] for k in absent}
    else:
        score = {k: sum(pairs[(s, k)] for s in scene.kinds) for k in absent}
    best = max(score.values())
    return _pick(rng, [k for k in absent if score[k] == best])  # ties at random


def make_pope(rng: np.random.Generator, world: SceneWorld, n: int, split: str, single: Counter,
              pairs: Counter) -> list[tuple[str, str, Scene]]:
    """(question, label, scene) in pairs: a probe the split picks for an image that lacks it ("no"),
    and the same probe of a second image that shows it ("yes"). Every question text is then asked
    as often with "yes" as with "no", so neither the text nor the kind's frequency gives the answer."""
    def scene_with(first: tuple[str, str] | None) -> Scene:
        size = int(rng.integers(2, MAX_OBJECTS + 1))
        kinds = world.draw_kinds(rng, size, first=first or _pick(rng, TAUGHT_KINDS), allowed=ALL_KINDS)
        return place(rng, kinds, _pick(rng, world.layouts(True, size)))

    out = []
    for _ in range(-(-n // 2)):
        without = scene_with(None)
        colour, shape = pope_negative(rng, split, without, single, pairs)
        text = EVAL_PHRASES["exists"].format(colour=colour, shape=shape)
        out += [(text, "no", without), (text, "yes", scene_with((colour, shape)))]
    return [out[int(i)] for i in rng.permutation(len(out))[:n]]


def make_caption_only(rng: np.random.Generator, world: SceneWorld, n: int) -> list[tuple[Scene, dict]]:
    """(scene, ARC-style record) per image: a scene showing a thing of a caption-only colour, and no
    thing of that shape in the other one, with the start of a caption ("a big") and its two
    continuations ("purple circle" / "pink circle"), scored by likelihood after the image as the
    cooldown's captions are written. The true colour is balanced; a model that has not tied the
    words to their colours ranks them alike: chance 0.5."""
    out = []
    for i, colour in enumerate(balanced(rng, CAPTION_COLOURS, n)):
        shape = _pick(rng, SHAPES)
        other = next(c for c in CAPTION_COLOURS if c != colour)
        scene = eval_scene(rng, world, (colour, shape), int(rng.integers(2, MAX_OBJECTS + 1)),
                           lambda k, o=(other, shape): k == o)
        choices = [{"label": label, "text": f"{c} {shape}"} for label, c in zip("AB", CAPTION_COLOURS, strict=True)]
        out.append((scene, {"id": f"caption_only-{i:05d}", "answerKey": "AB"[CAPTION_COLOURS.index(colour)],
                            "question": {"stem": f"a {scene.things[0].size}", "choices": choices}}))
    return out


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


def vqa_chance(kinds: Sequence[str], answers: dict[str, Sequence[str]] = VISION_ANSWERS) -> float:
    """Accuracy of the best answer-blind guesser: answers are balanced within each kind."""
    return sum(1 / len(answers[k]) for k in kinds) / len(kinds)


# ---- writing ------------------------------------------------------------------------------------

def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, records: Sequence[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8")


def _save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG")  # no metadata chunks: same pixels, same bytes


def _write_vqa(out: Path, name: str, items: list[tuple[str, str, str, Scene]], first_id: int,
               size: int, rng: np.random.Generator, scenes: dict) -> None:
    questions, annotations = [], []
    for i, (kind, q, answer, scene) in enumerate(items):
        image_id = first_id + i
        _save_png(render(scene, size, rng), out / image_name(image_id))
        scenes[image_name(image_id)] = scene.to_json()
        questions.append({"image_id": image_id, "question": q, "question_id": i})
        annotations.append({
            "question_id": i, "image_id": image_id, "answer_type": VQA_ANSWER_TYPES[kind],
            "multiple_choice_answer": answer, "answers": [{"answer": answer, "answer_id": j} for j in range(1, 11)],
        })
    _write_json(out / f"{name}_questions.json", {"questions": questions})
    _write_json(out / f"{name}_annotations.json", {"annotations": annotations})


def _write_eval(cfg: PrepareConfig, seed: int, creatures: list[Creature], world: SceneWorld,
                train_scenes: list[Scene], out: Path) -> dict[str, int]:
    (out / "images").mkdir(parents=True)
    n, scenes, tasks, counts = cfg.n_eval, {}, {}, {}
    vqa_rng = child_rng(seed, "eval-vqa")
    vqa = make_vqa(vqa_rng, world, n)
    _write_vqa(out, "vqa", vqa, 0, cfg.image_size, vqa_rng, scenes)
    tasks["vqa"] = {"kind": "vqa", "questions": "vqa_questions.json", "annotations": "vqa_annotations.json",
                    "image_dir": "images", "chance": round(vqa_chance([k for k, *_ in vqa]), 6)}
    counts["eval_vqa"] = len(vqa)

    single, pairs = kind_statistics(train_scenes)
    image_id = n
    for split in POPE_SPLITS:
        rng, records = child_rng(seed, f"eval-pope-{split}"), []
        drawn: dict[int, int] = {}  # scene object id -> image id: both probes of a scene share its image
        for qid, (text, label, scene) in enumerate(make_pope(rng, world, n, split, single, pairs)):
            if id(scene) not in drawn:
                drawn[id(scene)] = image_id
                _save_png(render(scene, cfg.image_size, rng), out / image_name(image_id))
                scenes[image_name(image_id)] = scene.to_json()
                image_id += 1
            records.append({"question_id": qid, "image": image_name(drawn[id(scene)]), "text": text,
                            "label": label, "split": split})
        _write_jsonl(out / f"pope_{split}.jsonl", records)
        tasks[f"pope_{split}"] = {"kind": "pope", "file": f"pope_{split}.jsonl", "chance": 0.5}
        counts[f"eval_pope_{split}"] = len(records)

    rng, records = child_rng(seed, "eval-caption-only"), []
    for scene, record in make_caption_only(rng, world, n):
        _save_png(render(scene, cfg.image_size, rng), out / image_name(image_id))
        scenes[image_name(image_id)] = scene.to_json()
        records.append({**record, "image": image_name(image_id)})
        image_id += 1
    _write_jsonl(out / "caption_only.jsonl", records)
    tasks["caption_only"] = {"kind": "caption", "file": "caption_only.jsonl", "chance": 0.5}
    counts["eval_caption_only"] = len(records)

    text_mc = make_text_mc(child_rng(seed, "eval-text-mc"), creatures, n)
    _write_jsonl(out / "text_mc.jsonl", text_mc)
    tasks["text_mc"] = {"kind": "mc", "file": "text_mc.jsonl", "chance": 0.25}
    counts["eval_text_mc"] = len(text_mc)
    _write_json(out / "tasks.json", tasks)
    _write_json(out / "scenes.json", scenes)
    return counts


def world_knobs(cfg: PrepareConfig) -> dict:
    """The `prepare` params the world is made from (not those that select or read user files)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("source", "max_bad_fraction", "files")}


def _quiet(_: str) -> None:
    pass


def write_world(cfg: PrepareConfig, seed: int, out_dir: Path, log: Callable[[str], None] = _quiet) -> dict[str, int]:
    """Generate the world into `out_dir` (data/raw) atomically; returns the counts of each product."""
    creatures = make_creatures(child_rng(seed, "creatures"), cfg.n_creatures, cfg.n_instruct_creatures)
    world = SceneWorld.make(seed)
    scene_rng = child_rng(seed, "scenes")
    scenes = [train_scene(scene_rng, world) for _ in range(cfg.n_images)]
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
        docs = make_corpus(child_rng(seed, "corpus"), creatures, cfg.n_text_docs, world)
        _write_jsonl(tmp / "text.jsonl", [{"text": d} for d in docs])

        log(f"writing {cfg.n_instruct} instruction conversations")
        convs = make_instructions(child_rng(seed, "instruct"), cfg, scenes, creatures)
        _write_json(tmp / "instruct.json", convs)

        log(f"writing the evaluation sets ({cfg.n_eval} questions per task)")
        counts = {
            "text_docs": len(docs), "images": len(scenes), "creatures": len(creatures),
            "instruct_vision": cfg.n_instruct - cfg.n_text_instruct, "instruct_text": cfg.n_text_instruct,
            **_write_eval(cfg, seed, creatures, world, scenes, tmp / "eval"),
        }
        _write_json(tmp / "world.json", {
            "config": {"seed": seed, **world_knobs(cfg)}, "counts": counts, "questions": QUESTIONS,
            "attributes": ATTRIBUTES, "creatures": [asdict(c) for c in creatures],
            "scenes": {"held_out_kinds": [list(k) for k in HELD_OUT_KINDS], "caption_colours": list(CAPTION_COLOURS),
                       "eval_layouts": [list(lay) for lay in world.eval_layouts],
                       "kind_weights": {f"{c} {s}": w for (c, s), w in world.weights.items()},
                       "partners": {f"{c} {s}": " ".join(p) for (c, s), p in world.partner.items()},
                       "ft_phrases": FT_PHRASES, "eval_phrases": EVAL_PHRASES},
        })
    return counts
