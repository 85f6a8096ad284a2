"""pipeline.encoder_probe on a made-up feature cache: features that state each cell's colour and shape
answer POPE through the probe; features that state nothing leave it at chance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.encoder_probe import asked_kind, probe_split
from vlm.data.features import FeatureStore, image_key, write_store
from vlm.data.world import COLOURS, EVAL_PHRASES, GRID, HELD_OUT_KINDS, SHAPES

TAUGHT = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_KINDS]


def world(tmp_path, informative: bool):
    """300 scenes of taught kinds; POPE `random` asks one present and one absent kind of the last 100."""
    rng = np.random.default_rng(0)
    eval_dir, scenes, features = tmp_path / "eval", {}, {}
    (eval_dir / "images").mkdir(parents=True)
    width = len(COLOURS) + len(SHAPES)
    for i in range(300):
        name = f"images/{i:06d}.png"
        cells = rng.choice(GRID * GRID, size=rng.integers(1, 5), replace=False)
        kinds = [TAUGHT[k] for k in rng.choice(len(TAUGHT), size=len(cells), replace=False)]
        scenes[name] = [{"cell": int(c), "colour": k[0], "shape": k[1], "size": "big"}
                        for c, k in zip(cells, kinds, strict=True)]
        f = rng.normal(0, 0.1, (GRID * GRID, width)).astype(np.float32)
        if informative:
            for c, (colour, shape) in zip(cells, kinds, strict=True):
                f[c, COLOURS.index(colour)] += 1
                f[c, len(COLOURS) + SHAPES.index(shape)] += 1
        (eval_dir / name).write_bytes(name.encode())  # the cache keys an image by its file's bytes
        features[image_key(name.encode())] = f
    items = []
    for name in list(scenes)[200:]:
        present = {(t["colour"], t["shape"]) for t in scenes[name]}
        absent = next(k for k in TAUGHT if k not in present)
        for (colour, shape), label in ((sorted(present)[0], "yes"), (absent, "no")):
            text = EVAL_PHRASES["exists"].format(colour=colour, shape=shape)
            items.append({"question_id": len(items), "image": name, "label": label, "text": text})
    (eval_dir / "pope_random.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    store_dir = tmp_path / "features"
    store_dir.mkdir()
    write_store(store_dir, [(k, lambda k=k: k.encode()) for k in features],
                lambda files: torch.from_numpy(np.stack([features[f.decode()] for f in files])),
                torch.zeros(GRID * GRID, width), "made-up", log=lambda _: None)
    return FeatureStore(store_dir), eval_dir, scenes


def test_features_that_show_each_cell_answer_pope_through_the_probe(tmp_path):
    result = probe_split(*world(tmp_path, informative=True), "random", steps=300)
    assert result["n"] == 200 and result["train_images"] == 200
    assert result["accuracy"] > 0.95 and result["cell_accuracy"] > 0.95
    assert 0.4 < result["yes_ratio"] < 0.6


def test_features_that_show_nothing_leave_the_probe_at_chance(tmp_path):
    result = probe_split(*world(tmp_path, informative=False), "random", steps=300)
    assert result["accuracy"] < 0.65


def test_asked_kind_reads_the_worlds_pope_question_and_refuses_another():
    assert asked_kind(EVAL_PHRASES["exists"].format(colour="red", shape="circle")) == ("red", "circle")
    with pytest.raises(ValueError, match="not the embedded world's POPE question"):
        asked_kind("is there a cat on the sofa?")
