"""End to end: the real DVC pipeline on a tiny params file, in temporary copies of the repository.

One module-scoped copy runs the whole DAG once (about a minute on 2 CPU cores); the other tests
read its products, ask DVC what a param change would re-run, or run single stages against it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from vlm.training.schedules import warmup_cosine

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
                "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}  # `dvc exp` commits
STAGES = ["prepare", "tokenize", "stream-shard", "train-encoder", "text-pretrain", "branch-at-fraction",
          "mixed-cooldown", "finetune", "evaluate"]

TINY = {
    "prepare": {"n_text_docs": 120, "n_creatures": 8, "n_instruct_creatures": 2, "n_images": 120,
                "n_instruct": 120, "n_eval": 40},
    "tokenize": {"vocab_size": 400},
    "shard": {"seq_len": 32},
    "vision": {"tiny": {"width": 32, "layers": 2, "heads": 2, "embed_dim": 32, "steps": 4, "batch_size": 16}},
    "pretrain": {"steps": 10, "batch_size": 4, "warmup_steps": 2},
    "cooldown": {"steps": 6, "batch_size": 32, "warmup_steps": 2},
    "finetune": {"epochs": 1, "batch_size": 16, "warmup_steps": 2},
    "evaluate": {"batch_size": 32},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def run(cwd: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(cwd), **GIT_IDENTITY}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        out = f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}")
    return proc


def set_params(repo: Path, **dotted) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in dotted.items():
        node = params
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@contextmanager
def changed_params(repo: Path, **dotted):
    """params.yaml with some values changed, restored afterwards."""
    original = (repo / "params.yaml").read_text()
    try:
        set_params(repo, **dotted)
        yield
    finally:
        (repo / "params.yaml").write_text(original)


def make_repo(dst: Path, **overrides) -> Path:
    """A git + DVC copy of the tracked sources with the tiny params and no products."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel == "dvc.lock" or rel.startswith(("metrics/", "logs/")) or not (ROOT / rel).is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if overrides:
        set_params(dst, **overrides)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
    return dst


def lock_outs(repo: Path, stages: list[str]) -> dict:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {s: [(o["path"], o["md5"]) for o in lock[s].get("outs", [])] for s in stages}


def would_run(repo: Path) -> list[str]:
    out = run(repo, "dvc", "repro", "--dry").stdout
    return [s for s in STAGES if f"Running stage '{s}'" in out]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("tiny"))
    t0 = time.time()
    run(repo, "dvc", "repro")
    print(f"tiny dvc repro: {time.time() - t0:.0f}s")
    return repo


def test_full_repro_ends_in_metrics_for_every_phase(tiny):
    metrics = json.loads((tiny / "metrics/eval.json").read_text())
    for key in ("vision_stable", "text_stable", "stable_mean"):
        assert isinstance(metrics[key], float)
    assert set(metrics["phases"]) == {"text_pretrain", "cooldown", "finetune"}
    assert "vision_stable" not in metrics["phases"]["text_pretrain"]  # a text-only LM has no eyes
    for task in ("vqa", "pope", "text_mc"):
        t = metrics["tasks"][task]
        assert 0 <= t["accuracy"] <= 1
        assert t["stable"] == pytest.approx((t["accuracy"] - t["chance"]) / (1 - t["chance"]))
    for curve in ("pretrain", "cooldown", "finetune", "encoder"):
        header = (tiny / f"logs/{curve}.csv").read_text().splitlines()[0].split(",")
        assert header[:3] == ["step", "loss", "lr"]
    shown = run(tiny, "dvc", "metrics", "show", "--json").stdout
    assert "vision_stable" in shown
    plots = run(tiny, "dvc", "plots", "show", "--json").stdout
    assert "training loss" in plots and "cooldown image token share" in plots


def test_a_second_repro_does_nothing(tiny):
    t0 = time.time()
    out = run(tiny, "dvc", "repro").stdout
    print(f"second dvc repro: {time.time() - t0:.1f}s")
    assert "Running stage" not in out
    assert "up to date" in run(tiny, "dvc", "status").stdout


def test_checkpoints_land_exactly_on_the_branch_points(tiny):
    params = yaml.safe_load((tiny / "params.yaml").read_text())
    steps, batch, seq = params["pretrain"]["steps"], params["pretrain"]["batch_size"], params["shard"]["seq_len"]
    expected = {round(f * steps) for f in params["pretrain"]["branch_points"]}
    saved = {int(p.stem.removeprefix("ba")) for p in (tiny / "data/pretrain/checkpoints").glob("*.pt")}
    assert saved == expected
    for step in (min(expected), max(expected)):
        ckpt = torch.load(tiny / f"data/pretrain/checkpoints/ba{step}.pt", map_location="cpu", weights_only=False)
        timestamp = ckpt["state"]["timestamp"]["Timestamp"]
        assert timestamp["batch"] == step
        assert timestamp["token"] == step * batch * seq  # every text row is full: tokens are exact
    val = json.loads((tiny / "metrics/pretrain.json").read_text())["val_loss"]
    assert all(isinstance(v, float) for v in val.values()) and len(val) == len(expected)


def test_branch_records_step_tokens_and_the_main_schedule_lr(tiny):
    p = yaml.safe_load((tiny / "params.yaml").read_text())
    info = json.loads((tiny / "data/branch/branch.json").read_text())
    step = round(p["branch"]["fraction"] * p["pretrain"]["steps"])
    assert info["step"] == step
    assert info["tokens_seen"] == step * p["pretrain"]["batch_size"] * p["shard"]["seq_len"]
    pt = p["pretrain"]
    assert info["lr"] == pytest.approx(warmup_cosine(step, pt["steps"], pt["lr"], pt["warmup_steps"],
                                                     pt["final_lr_ratio"]))


def test_realised_image_token_ratio_is_within_two_points(tiny):
    cooldown = json.loads((tiny / "metrics/cooldown.json").read_text())
    ratio = yaml.safe_load((tiny / "params.yaml").read_text())["cooldown"]["image_ratio"]
    assert abs(cooldown["realised_token_share"]["captions"] - ratio) <= 0.02
    assert cooldown["realised_token_share"]["instruct"] == 0
    assert sum(cooldown["batch_counts"].values()) == 32


@pytest.mark.parametrize(
    "change, first",
    [
        ({"cooldown.image_ratio": 0.3}, "mixed-cooldown"),
        ({"cooldown.instruct_ratio": 0.1}, "mixed-cooldown"),
        ({"branch.fraction": 0.6}, "branch-at-fraction"),
        ({"finetune.epochs": 2}, "finetune"),
        ({"evaluate.max_new_tokens": 3}, "evaluate"),
        ({"tokenize.vocab_size": 420}, "tokenize"),
        ({"shard.val_fraction": 0.1}, "stream-shard"),
    ],
)
def test_a_param_change_starts_at_the_stage_that_reads_it(tiny, change, first):
    """`--dry` lists the stages whose own params or deps changed; what follows re-runs as outputs change."""
    with changed_params(tiny, **change):
        assert would_run(tiny) == [first]
    assert would_run(tiny) == []


def test_bad_branch_fraction_fails_before_work_and_keeps_the_old_branch(tiny):
    before = (tiny / "data/branch/model.safetensors").read_bytes()
    with changed_params(tiny, **{"branch.fraction": 0.5}):
        proc = run(tiny, "python", "-m", "pipeline.branch", check=False)
    assert proc.returncode != 0
    assert "branch.fraction" in proc.stderr and "[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]" in proc.stderr
    assert (tiny / "data/branch/model.safetensors").read_bytes() == before


def test_vocab_smaller_than_the_special_tokens_fails_before_work(tiny):
    before = (tiny / "data/tokens/tokenizer.json").read_bytes()
    with changed_params(tiny, **{"tokenize.vocab_size": 100}):
        proc = run(tiny, "python", "-m", "pipeline.tokenize_sources", check=False)
    assert proc.returncode != 0 and "tokenize.vocab_size" in proc.stderr
    assert "reading" not in proc.stdout  # failed before touching the data
    assert (tiny / "data/tokens/tokenizer.json").read_bytes() == before


def ran(proc: subprocess.CompletedProcess) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in proc.stdout]


# The experiments below leave their params in the workspace (as `dvc exp run` does): keep them last.
def test_exp_run_of_an_image_ratio_reruns_only_cooldown_finetune_evaluate(tiny):
    proc = run(tiny, "dvc", "exp", "run", "-S", "cooldown.image_ratio=0.3")
    assert ran(proc) == ["mixed-cooldown", "finetune", "evaluate"]
    realised = json.loads((tiny / "metrics/cooldown.json").read_text())["realised_token_share"]["captions"]
    assert abs(realised - 0.3) <= 0.02


def test_exp_run_of_a_branch_fraction_does_not_rerun_the_text_run(tiny):
    proc = run(tiny, "dvc", "exp", "run", "-S", "branch.fraction=0.6")
    assert ran(proc) == ["branch-at-fraction", "mixed-cooldown", "finetune", "evaluate"]
    assert json.loads((tiny / "data/branch/branch.json").read_text())["step"] == 6


def test_blank_image_control_scores_at_most_chance_on_vision(tiny):
    """The control of an honest world: without image content, vision tasks sit at chance."""
    run(tiny, "dvc", "exp", "run", "-S", "vision.blank_images=true")
    metrics = json.loads((tiny / "metrics/eval.json").read_text())
    assert metrics["vision_stable"] <= 0.1


def test_data_stages_are_bit_for_bit_deterministic_and_tokenize_params_skip_prepare(tmp_path, tiny):
    other = make_repo(tmp_path)
    run(other, "dvc", "repro", "stream-shard")
    data = ["prepare", "tokenize", "stream-shard"]
    assert lock_outs(other, data) == lock_outs(tiny, data)
    set_params(other, **{"tokenize.vocab_size": 420})
    assert ran(run(other, "dvc", "repro", "stream-shard")) == ["tokenize", "stream-shard"]


def test_a_local_pretrained_open_clip_folder_is_loaded_instead_of_training(tmp_path):
    from vlm.model.vision import build_clip, preprocess_config, save_clip, tiny_clip_config

    ckpt = tmp_path / "my-siglip"
    cfg = tiny_clip_config(32, 16, 32, 2, 2, 32, vocab_size=64, context_length=8, pad_id=2, eos_id=1)
    save_clip(build_clip(cfg), cfg, ckpt, preprocess_config(32))
    repo = make_repo(tmp_path / "repo", **{"vision.pretrained": str(ckpt)})
    run(repo, "python", "-m", "pipeline.train_encoder")
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        assert (repo / "data/encoder" / name).read_bytes() == (ckpt / name).read_bytes()
    assert json.loads((repo / "metrics/encoder.json").read_text())["source"] == str(ckpt)

    set_params(repo, **{"vision.pretrained": str(tmp_path / "missing")})
    proc = run(repo, "python", "-m", "pipeline.train_encoder", check=False)
    assert proc.returncode != 0 and "vision.pretrained" in proc.stderr
    assert (repo / "data/encoder/open_clip_model.safetensors").exists()  # the old output is untouched
