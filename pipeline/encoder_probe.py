"""`python -m pipeline.encoder_probe`: does the frozen image encoder see what POPE asks?

A linear probe on the workspace's cached encoder features (data/features): in the embedded world
each patch of the tiny encoder is one cell of the 3 x 3 grid, so one linear layer per attribute,
shared by the patches, reads each cell's colour and shape (or "empty") from its patch's features.
It is fitted on the evaluation images that a POPE split does not use and never shown a held-out
kind (as the VLM's training images never show one: it must compose colour and shape, as the VLM
must); it answers the split's questions "yes" when one cell is predicted as the asked colour and
shape. Printed per split: the probe's POPE accuracy and yes ratio, on the held-out kinds alone, its
cell accuracy, and the VLM's own scores from metrics/eval.json as the workspace holds it. A probe
far above the VLM says the features hold the answer and the language model does not use them
(docs/world.md, "What it still cannot do").

Needs the embedded world (data/raw/eval/scenes.json) and cached features with one patch per cell.
Reads the workspace and trains nothing of the pipeline; about 50 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from pipeline.paths import ENCODER, FEATURES, RAW
from vlm.data import readers
from vlm.data.features import FeatureStore
from vlm.data.world import EVAL_PHRASES, GRID, HELD_OUT_KINDS, POPE_SPLITS
from vlm.io import read_json

EXISTS = re.compile(re.escape(EVAL_PHRASES["exists"]).replace(r"\{colour\}", r"(\w+)").replace(r"\{shape\}", r"(\w+)"))


def asked_kind(question: str) -> tuple[str, str]:
    """The (colour, shape) a POPE question of the embedded world asks about."""
    m = EXISTS.fullmatch(question)
    if m is None:
        raise ValueError(f"{question!r} is not the embedded world's POPE question ({EVAL_PHRASES['exists']!r})")
    return m.group(1), m.group(2)


def cell_labels(scenes: dict, names: list[str], attribute: str, ids: dict[str, int]) -> torch.Tensor:
    """(images, cells) class of each cell's `attribute` (colour or shape): 0 empty, else its id."""
    y = torch.zeros(len(names), GRID * GRID, dtype=torch.long)
    for i, name in enumerate(names):
        for t in scenes[name]:
            y[i, t["cell"]] = ids[t[attribute]]
    return y


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 1500, seed: int = 0) -> torch.nn.Linear:
    """A softmax-regression probe from features x (n, width) to classes y (n,), fitted full-batch with Adam."""
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        opt.step()
    return probe


def probe_split(store: FeatureStore, eval_dir: Path, scenes: dict, split: str, steps: int = 1500) -> dict:
    """The probe's POPE scores on one split, fitted on the evaluation images the split does not use."""
    items = readers.read_pope(eval_dir / f"pope_{split}.jsonl", check_images=False)
    for it in items:  # scenes.json names an image as the POPE file does, relative to the evaluation folder
        it["image"] = it["image"].relative_to(eval_dir).as_posix()
    things = [t for scene in scenes.values() for t in scene]
    ids = {a: {v: i + 1 for i, v in enumerate(sorted({t[a] for t in things}))} for a in ("colour", "shape")}
    test = sorted({it["image"] for it in items})
    train = sorted(set(scenes) - set(test))

    def features(names: list[str]) -> torch.Tensor:
        x = store([(eval_dir / n).read_bytes() for n in names]).float()
        if x.shape[1] != GRID * GRID:
            raise SystemExit(f"encoder_probe: the features have {x.shape[1]} patches per image, the probe needs "
                             f"one per grid cell ({GRID * GRID}: the tiny encoder, 48 px images, 16 px patches)")
        return x

    x = features(train)
    mean, sd = x.mean((0, 1)), x.std((0, 1)) + 1e-6
    x = ((x - mean) / sd).flatten(0, 1)
    held_out = torch.zeros(len(train), GRID * GRID, dtype=torch.bool)
    for i, name in enumerate(train):
        for t in scenes[name]:
            held_out[i, t["cell"]] = (t["colour"], t["shape"]) in HELD_OUT_KINDS
    taught = ~held_out.flatten()
    xt = (features(test) - mean) / sd
    pred, truth_cells = {}, {}
    for a in ("colour", "shape"):
        y = cell_labels(scenes, train, a, ids[a]).flatten()
        probe = fit_probe(x[taught], y[taught], len(ids[a]) + 1, steps)
        with torch.no_grad():
            pred[a] = probe(xt).argmax(-1)  # (images, cells)
        truth_cells[a] = cell_labels(scenes, test, a, ids[a])
    row = {name: i for i, name in enumerate(test)}
    said, held = [], []
    for it in items:
        colour, shape = asked_kind(it["text"])
        held.append((colour, shape) in HELD_OUT_KINDS)
        r = row[it["image"]]
        said.append(bool(((pred["colour"][r] == ids["colour"].get(colour, -1))
                          & (pred["shape"][r] == ids["shape"].get(shape, -1))).any()))
    truth = [it["label"] == "yes" for it in items]
    right = (pred["colour"] == truth_cells["colour"]) & (pred["shape"] == truth_cells["shape"])
    hits = [s == t for s, t in zip(said, truth, strict=True)]
    held_hits = [h for h, ho in zip(hits, held, strict=True) if ho]
    return {"accuracy": sum(hits) / len(items), "yes_ratio": sum(said) / len(items), "n": len(items),
            "held_out_accuracy": sum(held_hits) / len(held_hits) if held_hits else None, "held_out_n": len(held_hits),
            "cell_accuracy": right.float().mean().item(), "train_images": len(train)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500, help="full-batch Adam steps of each probe")
    args = ap.parse_args(argv)
    eval_dir = RAW / "eval"
    if not (eval_dir / "scenes.json").is_file():
        raise SystemExit(f"encoder_probe: {eval_dir / 'scenes.json'} is missing: the probe needs the embedded world "
                         "(prepare.source: synthetic) and its outputs (dvc repro, or dvc checkout)")
    store, scenes = FeatureStore(FEATURES, ENCODER), read_json(eval_dir / "scenes.json")
    vlm = read_json("metrics/eval.json")["tasks"] if Path("metrics/eval.json").is_file() else {}
    print("POPE split    probe (yes ratio)  on held-out kinds (n)  cell accuracy  the VLM (yes ratio)")
    for split in POPE_SPLITS:
        r = probe_split(store, eval_dir, scenes, split, args.steps)
        own = vlm.get(f"pope_{split}", {})
        theirs = f"{own['accuracy']:.3f} ({own['yes_ratio']:.2f})" if own else "-"
        held = f"{r['held_out_accuracy']:.3f} ({r['held_out_n']})" if r["held_out_n"] else "- (0)"
        print(f"{split:13s} {r['accuracy']:.3f} ({r['yes_ratio']:.2f})      {held:22s} {r['cell_accuracy']:.3f}"
              f"          {theirs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
