"""The study's model presets, params/79m.yaml and params/1.4b.yaml (Table 2 of ../shared/paper.md).

Each file passes the same checks as params.yaml (with stand-ins for the tokenizer and encoder files
it names), carries Table 2's shape and hyperparameters, and its LM has the size its name says at
GPT-NeoX's vocabulary (counted on PyTorch's meta device: shapes only).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import open_clip
import pytest
import torch

from vlm.config import MAX_SEQ_LEN, load
from vlm.model.lm import LM, lm_config, num_params

ROOT = Path(__file__).resolve().parents[1]
NEOX_VOCAB = 50_277 + 6  # GPT-NeoX-20B's tokenizer.json plus our six special tokens
TABLE_2 = {  # layers, heads, d_model, d_head, warmup, peak LR, batch (seqs of 2048), text tokens, size
    "79m": (8, 4, 512, 128, 400, 3e-3, 512, 237e9, 79e6),
    "1.4b": (24, 16, 2048, 128, 5000, 1e-2, 256, 4.3e12, 1.4e9),
}


@pytest.fixture
def preset(request, tmp_path, monkeypatch):
    """The preset's params, loaded in a folder holding empty stand-ins for the files it names."""
    monkeypatch.chdir(tmp_path)
    for stand_in in ("inputs/tokenizer/gpt-neox-20b/tokenizer.json",
                     "inputs/encoder/ViT-SO400M-14-SigLIP-384/open_clip_pytorch_model.bin"):
        Path(stand_in).parent.mkdir(parents=True)
        Path(stand_in).write_bytes(b"")
    shutil.copy2(ROOT / f"params/{request.param}.yaml", "params.yaml")
    return request.param, load("params.yaml")


@pytest.mark.parametrize("preset", list(TABLE_2), indirect=True)
def test_preset_carries_table_2(preset):
    name, cfg = preset
    layers, heads, d_model, d_head, warmup, lr, batch, tokens, size = TABLE_2[name]
    assert cfg.model.preset == name
    shape = lm_config(name, NEOX_VOCAB, MAX_SEQ_LEN)
    assert (shape.n_layer, shape.n_head, shape.d_model, shape.d_head) == (layers, heads, d_model, d_head)
    pt = cfg.pretrain
    assert (pt.warmup_steps, pt.lr, pt.batch_size, cfg.shard.seq_len) == (warmup, lr, batch, 2048)
    assert pt.steps * pt.batch_size * cfg.shard.seq_len == pytest.approx(tokens, rel=1e-3)
    # the cooldown: about 20 x params tokens, re-warmed to 3e-3 where it re-warms
    assert cfg.cooldown.steps * cfg.cooldown.batch_size * 2048 == pytest.approx(20 * size, rel=0.05)
    assert cfg.cooldown.rewarm_lr == 3e-3
    # SigLIP at 384 px, patch 14: 729 image tokens
    vision = open_clip.get_model_config(cfg.vision.model)["vision_cfg"]
    assert vision["image_size"] == 384 and "patch14" in vision["timm_model_name"]
    assert (384 // 14) ** 2 == cfg.shard.image_tokens == 729 and cfg.vision.freeze  # cut to the context with them
    assert cfg.prepare.source == "files" and cfg.tokenize.tokenizer.startswith("inputs/tokenizer/")


@pytest.mark.parametrize("name", list(TABLE_2))
def test_preset_parameter_count(name):
    with torch.device("meta"):
        lm = LM(lm_config(name, NEOX_VOCAB, MAX_SEQ_LEN))
    total = num_params(lm)
    print(f"{name}: {total:,} parameters at a vocabulary of {NEOX_VOCAB:,}")
    size = TABLE_2[name][-1]
    assert abs(total - size) / size < 0.06, f"{name}: {total:,} is not within 6% of {size:,.0f}"
    assert math.isclose(total, num_params(lm, exclude_embeddings=True) + 2 * NEOX_VOCAB * TABLE_2[name][2])


def _flat(d: dict, prefix: str = "") -> dict:
    return {k: v for key, val in d.items()
            for k, v in (_flat(val, f"{prefix}{key}.") if isinstance(val, dict) else {f"{prefix}{key}": val}).items()}


def test_study_profile_changes_only_the_budgets_it_explains():
    """params/study.yaml is params.yaml with the token budgets its header explains, nothing else: a key
    added to params.yaml must be added there too (the check below then names it)."""
    import yaml

    default = _flat(yaml.safe_load((ROOT / "params.yaml").read_text()))
    text = (ROOT / "params/study.yaml").read_text()
    profile = _flat(yaml.safe_load(text))
    assert set(profile) == set(default), set(profile) ^ set(default)
    changed = {k for k in default if profile[k] != default[k]}
    assert changed == {"prepare.n_text_docs", "pretrain.steps", "cooldown.steps"}
    for key in changed:
        assert f"{key} {default[key]} -> {profile[key]}" in text  # the header says what changed and why
    load(ROOT / "params/study.yaml")  # the same checks as params.yaml

    def cooldown_per_text(p: dict) -> float:  # cooldown samples per text-run sequence (same seq_len)
        return p["cooldown.steps"] * p["cooldown.batch_size"] / (p["pretrain.steps"] * p["pretrain.batch_size"])

    assert cooldown_per_text(profile) <= cooldown_per_text(default) / 10  # nearer the paper's proportions
