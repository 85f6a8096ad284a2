"""`python -m bench`: every code path at a tiny size (no timing asserted), and the FLOPs formula
against the model's own modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torch import nn

from bench.stack import train_flops_per_token
from vlm.model.lm import LM, lm_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", ["tiny", "79m"])
def test_flops_per_token_counts_every_matmul_weight(preset):
    cfg = lm_config(preset, 1000, 64)
    lm = LM(cfg)
    linear = sum(m.weight.numel() for m in lm.modules() if isinstance(m, nn.Linear))
    attention = 12 * cfg.n_layer * cfg.n_head * cfg.d_head * 64
    assert train_flops_per_token(cfg, 64) == 6 * linear + attention


@pytest.mark.bench
def test_bench_runs_every_figure_at_a_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    tiny = results["steps"]["tiny"]
    for key in ("stack_tokens_per_sec", "bare_tokens_per_sec", "matmul_peak_flops", "stack_utilisation"):
        assert tiny[key] > 0, key
    (data,) = results["data"]
    assert data["tokenize"]["docs"] > 0 and data["tokenize"]["ours_over_encode_batch"] > 0
    default = json.loads((ROOT / "metrics/shards.json").read_text())  # the default world, rewritten
    assert data["mds_write"]["samples"] == sum(split["samples"] for split in default.values())
    assert data["streaming_read"]["samples"] == 256
    img = results["image_steps"]
    assert set(img["variants"]) == {"pixels", "features", "features + split"} and img["encode_images_seconds"] > 0
    for v in img["variants"].values():
        assert v["cooldown_seconds_per_step"] > 0 and v["finetune_seconds_per_step"] > 0 and v["speedup"] > 0
    assert img["variants"]["pixels"]["speedup"] == 1.0
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    samples = json.loads((ROOT / "metrics/shards.json").read_text())["instruct/train"]["samples"]
    ft = params["finetune"]
    assert img["finetune_steps"] == ft["epochs"] * -(-samples // ft["batch_size"])  # the default's step counts
    assert img["cooldown_steps"] == params["cooldown"]["steps"]
    assert img["streaming_read_features"]["samples"] == 256
    assert [c["key"] for c in results["params_check"]["cases"]] == ["vision.blank_images", "pretrain.steps"]
    (dec,) = results["decode"]
    assert dec["same_answers"] and dec["cached"]["tokens_per_sec"] > 0 and dec["uncached"]["tokens_per_sec"] > 0
    pin = results["cpu_pinning"]
    assert pin["pinned"]["cpu"] == params["cpu"] and pin["native"]["cpu"] == {"threads": 0, "kernels": "native"}
    assert pin["pinned"]["threads"] == params["cpu"]["threads"] and pin["pinned_over_native"] > 0
    assert pin["compatible"]["cpu"] == {**params["cpu"], "kernels": "compatible"} and pin["compatible_over_pinned"] > 0
    figures = [row["figure"] for row in results["table"]]
    assert any(f.startswith("stack / bare") for f in figures) and any("Streaming read" in f for f in figures)
    for row in results["table"]:  # the printed table: every figure with its target
        assert row["figure"] in proc.stdout and row["target"] in proc.stdout

