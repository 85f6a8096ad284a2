"""The params schema (vlm/config.py) and the two ways users meet it: `python -m pipeline.check_params`
and `python -m pipeline STAGE`, which checks params.yaml before any stage module (and torch) loads.

Every malformed case is one small edit of the committed params.yaml; each must fail naming its
dotted key in backticks (and, for typos, the key that was meant).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from vlm import config
from vlm.config import ALL_KEYS, Config, ParamError, load, min_text_docs, parse, section

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
RAW: dict = yaml.safe_load(PARAMS.read_text())
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
NO_FILE = "/nonexistent/vlm-recipe-test/tokenizer.json"
NO_DIR = "/nonexistent/vlm-recipe-test/open_clip"
FILES = {"text": [{"path": "inputs/data/text.jsonl"}], "captions": [{"path": "inputs/data/c.tar"}],
         "instruct": [{"path": "inputs/data/llava.json"}], "vqa": [], "pope": [],
         "text_mc": [{"path": "inputs/data/arc.jsonl"}]}


# ---- edits of a deep copy of the committed params ----------------------------------------------

def put(**changes: Any) -> Callable[[dict], Any]:
    """`put(pretrain__steps=10.5)`: set dotted keys (`__` for `.`); sections are created if absent."""
    def edit(raw: dict) -> dict:
        for dotted, value in changes.items():
            *parents, leaf = dotted.split("__")
            node = raw
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return raw
    return edit


def drop(dotted: str) -> Callable[[dict], Any]:
    def edit(raw: dict) -> dict:
        *parents, leaf = dotted.split(".")
        node = raw
        for p in parents:
            node = node[p]
        del node[leaf]
        return raw
    return edit


def rename(dotted: str, new: str) -> Callable[[dict], Any]:
    """Rename the last part of `dotted` to `new`, keeping its value (a typo)."""
    def edit(raw: dict) -> dict:
        *parents, leaf = dotted.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[new] = node.pop(leaf)
        return raw
    return edit


def whole(value: Any) -> Callable[[dict], Any]:
    return lambda raw: value


@dataclasses.dataclass(frozen=True)
class Case:
    edit: Callable[[dict], Any] | None  # None: `text` is the file
    expect: tuple[str, ...]  # substrings of the message; the first is the key alone, in backticks
    lines: int = 1  # problems reported, one line each
    text: str | None = None

    def raw(self) -> Any:
        return self.edit(copy.deepcopy(RAW))

    def yaml_text(self) -> str:
        return self.text if self.text is not None else yaml.safe_dump(self.raw(), sort_keys=False)


CASES: dict[str, Case] = {
    # wrong types
    "seed-string": Case(put(seed="0"), ("`seed`", "must be an integer", "'0' (str)")),
    "steps-float": Case(put(pretrain__steps=10.5), ("`pretrain.steps`", "must be an integer", "10.5 (float)")),
    "steps-whole-float": Case(put(cooldown__steps=200.0), ("`cooldown.steps`", "must be an integer")),
    "lr-list": Case(put(pretrain__lr=[0.003]), ("`pretrain.lr`", "must be a number", "(list)")),
    "lr-null": Case(put(pretrain__lr=None), ("`pretrain.lr`", "must be a number", "None")),
    "epochs-null": Case(put(finetune__epochs=None), ("`finetune.epochs`", "must be an integer", "None")),
    "preset-number": Case(put(model__preset=7), ("`model.preset`", "must be a string")),
    "blank-images-str-false": Case(put(vision__blank_images="false"), ("`vision.blank_images`",
        "params.yaml: `vision.blank_images` must be a boolean (true/false), got 'false' (str)",)),
    "freeze-str-true": Case(put(vision__freeze="true"), ("`vision.freeze`", "a boolean", "'true' (str)")),
    "freeze-int-1": Case(put(vision__freeze=1), ("`vision.freeze`", "a boolean", "1 (int)")),
    "ratio-bool": Case(put(cooldown__image_ratio=True), ("`cooldown.image_ratio`", "must be a number")),
    "branch-points-scalar": Case(put(pretrain__branch_points=0.8), ("`pretrain.branch_points`", "non-empty list")),
    "branch-points-empty": Case(put(pretrain__branch_points=[]), ("`pretrain.branch_points`", "non-empty list")),
    "branch-point-str": Case(put(pretrain__branch_points=[0.2, "1.0"]),
                             ("`pretrain.branch_points[1]`", "must be a number")),
    # out of range
    "epochs-negative": Case(put(finetune__epochs=-1), ("`finetune.epochs`", "must be >= 1", "-1")),
    "cooldown-steps-zero": Case(put(cooldown__steps=0), ("`cooldown.steps`", "must be >= 1")),
    "val-fraction-zero": Case(put(shard__val_fraction=0), ("`shard.val_fraction`", "must be > 0.0")),
    "val-fraction-big": Case(put(shard__val_fraction=0.6), ("`shard.val_fraction`", "must be <= 0.5")),
    "image-ratio-1.5": Case(put(cooldown__image_ratio=1.5), ("`cooldown.image_ratio`", "must be <= 1.0", "1.5")),
    "lr-zero": Case(put(finetune__lr=0), ("`finetune.lr`", "must be > 0.0")),
    "rewarm-lr-negative": Case(put(cooldown__rewarm_lr=-0.1), ("`cooldown.rewarm_lr`", "must be > 0.0")),
    "seed-negative": Case(put(seed=-1), ("`seed`", "must be >= 0")),
    "vocab-too-small": Case(put(tokenize__vocab_size=100), ("`tokenize.vocab_size`", f">= {config.MIN_VOCAB}")),
    "seq-len-too-long": Case(put(shard__seq_len=4096), ("`shard.seq_len`", f"<= {config.MAX_SEQ_LEN}")),
    "branch-point-above-1": Case(put(pretrain__branch_points=[0.5, 1.5]),
                                 ("`pretrain.branch_points[1]`", "must be <= 1.0")),
    "tiny-layers-1": Case(put(vision__tiny__layers=1), ("`vision.tiny.layers`", "must be >= 2")),
    # allowed values and paths
    "preset-7b": Case(put(model__preset="7b"), ("`model.preset`", "must be one of", "'7b'")),
    "tokenizer-missing": Case(put(tokenize__tokenizer=NO_FILE), ("`tokenize.tokenizer`", "not an existing file")),
    "pretrained-missing": Case(put(vision__pretrained=NO_DIR), (
        "`vision.pretrained`", "not an existing file or folder")),
    "model-without-pretrained": Case(put(vision__model="ViT-B-16-SigLIP"), (
        "`vision.model`", "needs `vision.pretrained`")),
    "source-unknown": Case(put(prepare__source="hub"), ("`prepare.source`", "must be one of", "'hub'")),
    "files-empty": Case(put(prepare__source="files"), (
        "`prepare.files.text`", "`prepare.files.text` lists no source", "`prepare.files.captions` lists no source",
        "`prepare.files.instruct` lists no source", "`prepare.files` lists no evaluation source"), lines=4),
    "files-entry-not-mapping": Case(put(prepare__files__text=["inputs/data/a.jsonl"]), (
        "`prepare.files.text[0]`", "`prepare.files.text[0]` must be a mapping")),
    "files-entry-unknown-key": Case(put(prepare__files__captions=[{"path": "inputs/data/a.tar", "captoin": "txt"}]), (
        "`prepare.files.captions[0].captoin`", "is not a known param",
        "did you mean `prepare.files.captions[0].caption`")),
    "files-entry-no-path": Case(put(prepare__files__pope=[{"image_root": "inputs/data"}]), (
        "`prepare.files.pope[0].path`", "`prepare.files.pope[0].path` is missing")),
    "files-format-unknown": Case(put(prepare__files__text=[{"path": "inputs/data/a.txt", "format": "txt"}]), (
        "`prepare.files.text[0].format`", "must be one of")),
    "files-outside-inputs": Case(put(prepare__source="files", prepare__files=FILES | {
        "text": [{"path": "/data/dclm/*.jsonl"}], "instruct": [{"path": "inputs/data/../../llava.json"}]}), (
        "`prepare.files.text[0].path`", "must be a path under inputs/data/", "'/data/dclm/*.jsonl'",
        "`prepare.files.instruct[0].path` must be a path under inputs/data/"), lines=2),
    "files-vqa-pattern": Case(put(prepare__source="files", prepare__files=FILES | {"vqa": [
        {"questions": "inputs/data/q.json", "annotations": "inputs/data/a.json", "image_root": "inputs/data",
         "image_pattern": "{id}.jpg"}]}), ("`prepare.files.vqa[0].image_pattern`", "{image_id}")),
    "tokenizer-outside-inputs": Case(put(tokenize__tokenizer="params.yaml"), (
        "`tokenize.tokenizer`", "must be a path under inputs/tokenizer/")),
    # unknown, misspelt and missing keys
    "cooldown-lr-unknown": Case(put(cooldown__lr=0.001), (
        "`cooldown.lr`", "`cooldown.lr` is not a known param", "did you mean", "`cooldown.rewarm_lr`")),
    "section-pretrian": Case(rename("pretrain", "pretrian"), (
        "`pretrian`", "`pretrian` is not a known param", "did you mean `pretrain`", "`pretrain` is missing"), lines=2),
    "nested-patch-sise": Case(rename("vision.tiny.patch_size", "patch_sise"), (
        "`vision.tiny.patch_sise`", "`vision.tiny.patch_sise` is not a known param",
        "did you mean `vision.tiny.patch_size`", "`vision.tiny.patch_size` is missing"), lines=2),
    "top-level-unknown": Case(put(seeds=1), ("`seeds`", "`seeds` is not a known param; did you mean `seed`?")),
    "missing-leaf": Case(drop("finetune.warmup_steps"), (
        "`finetune.warmup_steps`", "`finetune.warmup_steps` is missing")),
    "missing-section": Case(drop("evaluate"), ("`evaluate`", "`evaluate` is missing")),
    # structure
    "cooldown-not-mapping": Case(put(cooldown=3), ("`cooldown`", "`cooldown` must be a mapping, got 3")),
    "tiny-null": Case(put(vision__tiny=None), ("`vision.tiny`", "`vision.tiny` must be a mapping, got None")),
    "file-is-list": Case(whole([1, 2]), ("`params`", "`params` must be a mapping, got [1, 2]")),
    "file-is-empty": Case(None, ("`params`", "`params` must be a mapping, got None"), text=""),
    "invalid-yaml": Case(None, ("not valid YAML", "line 2"), text="seed: 0\nprepare: [1, 2\n"),
    # rules tying fields together: each edit sets every value its message quotes, and breaks only its rule
    "ratios-above-1": Case(put(cooldown__image_ratio=0.6, cooldown__instruct_ratio=0.5), (
        "`cooldown.image_ratio`", "`cooldown.image_ratio` + `cooldown.instruct_ratio` = 1.1 > 1")),
    "fraction-not-saved": Case(put(pretrain__branch_points=[0.2, 0.4, 0.6, 0.8, 1.0], branch__fraction=0.5), (
        "`branch.fraction`", "`branch.fraction` 0.5 is not a saved branch point", "[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]")),
    # 0.33 of 300 steps is step 99, a whole step: 0.335 (step 100.5) is not. The fraction is moved to a
    # point that stays saved, so the only message is the whole-step one.
    "branch-point-not-whole": Case(put(pretrain__steps=300, pretrain__branch_points=[0.335, 1.0],
                                       branch__fraction=1.0), (
        "`pretrain.branch_points`", "`pretrain.branch_points`: 0.335 of `pretrain.steps` 300 is not a whole step",
        "(100.5)")),
    "branch-points-duplicate": Case(put(pretrain__branch_points=[0.2, 0.2, 0.8], branch__fraction=0.8), (
        "`pretrain.branch_points`", "`pretrain.branch_points` has duplicates")),
    "pretrain-warmup-long": Case(put(pretrain__steps=300, pretrain__warmup_steps=301), (
        "`pretrain.warmup_steps`", "`pretrain.warmup_steps` 301 is longer than `pretrain.steps` 300")),
    "cooldown-warmup-long": Case(put(cooldown__steps=200, cooldown__warmup_steps=201), (
        "`cooldown.warmup_steps`", "`cooldown.warmup_steps` 201 is longer than `cooldown.steps` 200")),
    "tiny-width-heads": Case(put(vision__tiny__width=98, vision__tiny__heads=4), (
        "`vision.tiny.width`", "`vision.tiny.width` 98 is not divisible by `vision.tiny.heads` 4")),
    "image-size-patch": Case(put(prepare__image_size=32, vision__tiny__patch_size=5), (
        "`vision.tiny.patch_size`", "`prepare.image_size` 32 is not divisible by `vision.tiny.patch_size` 5")),
    "image-tokens-tiny": Case(put(shard__image_tokens=729), (
        "`shard.image_tokens`", "`shard.image_tokens` 729 must be the tiny encoder's patches per image",
        "(prepare.image_size 48 / vision.tiny.patch_size 16)^2 = 9")),
    "text-docs-too-few": Case(put(prepare__n_creatures=32, prepare__n_text_docs=10), (
        "`prepare.n_text_docs`", f"`prepare.n_text_docs` must be >= {min_text_docs(32)}", "got 10")),
    "instruct-creatures-all": Case(put(prepare__n_creatures=32, prepare__n_instruct_creatures=32), (
        "`prepare.n_instruct_creatures`", "`prepare.n_instruct_creatures` must be <= `prepare.n_creatures` - 1 = 31",
        "got 32")),
    "cooldown-batch-1": Case(put(cooldown__batch_size=1, cooldown__image_ratio=0.2, cooldown__instruct_ratio=0.0), (
        "`cooldown.batch_size`", "`cooldown.batch_size` 1 is smaller than the 2 mixed sources")),
    "nproc-batch": Case(put(train__nproc=3, pretrain__batch_size=16, cooldown__batch_size=30,
                            finetune__batch_size=30), (
        "`pretrain.batch_size`", "`pretrain.batch_size` 16 is not divisible by `train.nproc` 3", "batch / nproc")),
    "nproc-zero": Case(put(train__nproc=0), ("`train.nproc`", "`train.nproc` must be >= 1, got 0")),
    "nproc-word": Case(put(train__nproc="all"), (
        "`train.nproc`", "`train.nproc` must be an integer or \"auto\", got 'all' (str)")),
    "resume-not-s3": Case(put(resume__folder="gs://bucket/ckpt"), (
        "`resume.folder`", "must be a folder or an s3://bucket/path URI", "'gs://bucket/ckpt'")),
    "remote-not-url": Case(put(shard__remote="bucket/shards"), (
        "`shard.remote`", "must be a URL such as s3://bucket/path", "'bucket/shards'")),
}


def check(case: Case, tmp_path: Path) -> str:
    """The ParamError message of a case (from `load` on a file when the case is file text)."""
    with pytest.raises(ParamError) as err:
        if case.text is not None:
            (tmp_path / "params.yaml").write_text(case.text)
            load(tmp_path / "params.yaml")
        else:
            parse(case.raw())
    return str(err.value)


# ---- 1. the committed file ---------------------------------------------------------------------

def test_committed_params_parse_to_a_frozen_config():
    cfg = load(PARAMS)
    assert isinstance(cfg, Config)
    assert cfg == parse(RAW)

    assert section(cfg, "vision.freeze") is True
    assert section(cfg, "seed") == 0
    cooldown = section(cfg, "cooldown")
    assert type(cooldown) is dict and cooldown == RAW["cooldown"]
    assert all(type(v) in (int, float) for v in cooldown.values())
    vision = section(cfg, "vision")
    assert type(vision["tiny"]) is dict and vision["tiny"] == RAW["vision"]["tiny"]
    assert section(cfg, "pretrain")["branch_points"] == RAW["pretrain"]["branch_points"]

    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cooldown.image_ratio = 0.5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.vision.tiny.width = 8  # type: ignore[misc]
    cooldown["steps"] = -5  # plain data is a copy: the config is untouched
    assert cfg.cooldown.steps == RAW["cooldown"]["steps"]


def test_missing_params_file_is_a_param_error(tmp_path):
    with pytest.raises(ParamError, match="params file not found"):
        load(tmp_path / "params.yaml")


# ---- 2. malformed params -----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_malformed_params_name_their_key(name, tmp_path):
    case = CASES[name]
    message = check(case, tmp_path)
    for part in case.expect:
        assert part in message, f"{part!r} not in:\n{message}"
    if name != "invalid-yaml":  # PyYAML's own message spans several lines
        key = case.expect[0]
        assert key.startswith("`") and key.endswith("`") and key.count("`") == 2, key
        lines = message.splitlines()
        assert len(lines) == case.lines, message
        source = "params.yaml" if case.text is None else str(tmp_path / "params.yaml")
        assert all(line.startswith(f"{source}: `") for line in lines), message


def test_cooldown_lr_suggestions_are_cooldown_keys():
    message = check(CASES["cooldown-lr-unknown"], Path())
    suggested = message.split("did you mean ", 1)[1]
    assert "`cooldown.rewarm_lr`" in suggested
    assert all(k.startswith("`cooldown.") for k in suggested.rstrip("?").split(" or ")), message


def test_two_independent_problems_are_both_reported():
    raw = put(seed=-1, vision__blank_images="no")(copy.deepcopy(RAW))
    with pytest.raises(ParamError) as err:
        parse(raw, "two.yaml")
    lines = str(err.value).splitlines()
    assert len(lines) == 2, lines
    assert any(line.startswith("two.yaml: `seed` must be >= 0") for line in lines)
    assert any(line.startswith("two.yaml: `vision.blank_images` must be a boolean") for line in lines)


def test_cross_checks_wait_for_every_field():
    """A field error hides the rules that tie fields together (they would read half-built data)."""
    raw = put(seed="x", cooldown__image_ratio=0.6, cooldown__instruct_ratio=0.5)(copy.deepcopy(RAW))
    with pytest.raises(ParamError) as err:
        parse(raw)
    assert str(err.value) == "params.yaml: `seed` must be an integer, got 'x' (str)"


def test_int_for_float_is_accepted_as_float():
    edit = put(pretrain__lr=1, cooldown__rewarm_lr=1, pretrain__branch_points=[1], branch__fraction=1)
    cfg = parse(edit(copy.deepcopy(RAW)))
    assert cfg.pretrain.lr == 1.0 and type(cfg.pretrain.lr) is float
    assert type(cfg.cooldown.rewarm_lr) is float
    assert cfg.pretrain.branch_points == [1.0] and type(cfg.pretrain.branch_points[0]) is float
    assert type(cfg.branch.fraction) is float


@pytest.mark.parametrize("value", ["auto", True, False])
def test_branch_rewarm_takes_auto_or_a_boolean(value):
    assert parse(put(branch__rewarm=value)(copy.deepcopy(RAW))).branch.rewarm == value


@pytest.mark.parametrize("value", ["yes", 1, "true", None])
def test_branch_rewarm_refuses_anything_else(value):
    with pytest.raises(ParamError, match=r'`branch.rewarm` must be a boolean \(true/false\) or "auto"|'
                       r"`branch.rewarm` must be one of"):
        parse(put(branch__rewarm=value)(copy.deepcopy(RAW)))


def test_carrying_the_optimizer_needs_the_text_run_to_save_it():
    with pytest.raises(ParamError, match="`branch.optimizer` carry needs .* `pretrain.save_optimizer` true"):
        parse(put(branch__optimizer="carry", pretrain__save_optimizer=False)(copy.deepcopy(RAW)))
    with pytest.raises(ParamError, match="`pretrain.save_optimizer` is not supported with `train.fsdp`"):
        parse(put(pretrain__save_optimizer=True, train__fsdp=True)(copy.deepcopy(RAW)))
    assert parse(put(branch__optimizer="carry", pretrain__save_optimizer=True)(copy.deepcopy(RAW))).branch.optimizer \
        == "carry"


def test_branch_point_that_lands_on_a_whole_step_is_accepted():
    """0.33 of 300 steps is step 99 (0.33 * 300 = 99.00000000000001 in floats): not an error."""
    cfg = parse(put(pretrain__branch_points=[0.33, 1.0], branch__fraction=0.33)(copy.deepcopy(RAW)))
    assert cfg.pretrain.branch_steps() == {0.33: 99, 1.0: 300}


def test_existing_tokenizer_file_and_pretrained_folder_are_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tok, enc = Path("inputs/tokenizer/tokenizer.json"), Path("inputs/encoder/open_clip")
    enc.mkdir(parents=True)
    tok.parent.mkdir()
    tok.write_text("{}")
    cfg = parse(put(tokenize__tokenizer=str(tok), vision__pretrained=str(enc))(copy.deepcopy(RAW)))
    assert cfg.tokenize.tokenizer == str(tok)
    assert cfg.vision.pretrained == str(enc)
    # a checkpoint file of a named open_clip model
    ckpt = enc / "open_clip_pytorch_model.bin"
    ckpt.write_bytes(b"")
    cfg = parse(put(vision__model="ViT-B-16-SigLIP", vision__pretrained=str(ckpt))(copy.deepcopy(RAW)))
    assert (cfg.vision.model, cfg.vision.pretrained) == ("ViT-B-16-SigLIP", str(ckpt))
    # the folder is not a file; each path must lie in its stage's folder
    with pytest.raises(ParamError, match="`tokenize.tokenizer` names .* not an existing file"):
        parse(put(tokenize__tokenizer=str(enc))(copy.deepcopy(RAW)))
    with pytest.raises(ParamError, match="`vision.pretrained` must be a path under inputs/encoder/"):
        parse(put(vision__pretrained="inputs/tokenizer")(copy.deepcopy(RAW)))
    # an empty string means "none", like null
    assert parse(put(tokenize__tokenizer="")(copy.deepcopy(RAW))).tokenize.tokenizer is None


# ---- bugs: each of these fails on the current vlm/config.py (see the closing note) ---------------

@pytest.mark.parametrize("dotted, value", [
    ("pretrain.lr", math.nan),
    ("cooldown.image_ratio", math.nan),
    ("pretrain.weight_decay", math.inf),
    ("cooldown.warmup_steps", math.inf),
])
def test_non_finite_numbers_are_rejected(dotted, value):
    """`.nan` passes every range check (all comparisons with NaN are false), `.inf` passes an open
    upper bound; both would reach training."""
    with pytest.raises(ParamError, match=f"`{dotted}`"):
        parse(put(**{dotted.replace(".", "__"): value})(copy.deepcopy(RAW)))


def test_file_that_is_not_utf8_is_a_param_error(tmp_path):
    """A Latin-1 comment (`# café`) must give a ParamError, not a UnicodeDecodeError traceback from
    `python -m pipeline STAGE` / `check_params`."""
    bad = tmp_path / "params.yaml"
    bad.write_bytes(PARAMS.read_bytes() + b"# caf\xe9\n")
    with pytest.raises(ParamError, match="params.yaml"):
        load(bad)


# ---- 3. what users run -------------------------------------------------------------------------

def run_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=60)


def test_check_params_cli(tmp_path):
    (tmp_path / "bad.yaml").write_text(CASES["blank-images-str-false"].yaml_text())
    proc = run_py("-m", "pipeline.check_params", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "bad.yaml: `vision.blank_images` must be a boolean (true/false), got 'false' (str)" in proc.stderr
    assert proc.stdout == ""

    proc = run_py("-m", "pipeline.check_params", str(PARAMS), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{PARAMS}: ok") and proc.stderr == ""

    (tmp_path / "params.yaml").write_text(PARAMS.read_text())  # the default file is ./params.yaml
    proc = run_py("-m", "pipeline.check_params", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("params.yaml: ok"), proc.stderr


def test_stage_with_bad_params_runs_nothing(tmp_path):
    (tmp_path / "params.yaml").write_text(CASES["cooldown-lr-unknown"].yaml_text())
    proc = run_py("-m", "pipeline", "text-pretrain", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("text-pretrain: bad params, nothing was run:\n")
    assert "params.yaml: `cooldown.lr` is not a known param" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "params.yaml"]  # nothing written

    # the same call in-process, then look at what it imported: the check comes before torch
    code = ("import sys; from pipeline.__main__ import main; rc = main(['text-pretrain']); "
            "print(rc, 'torch' in sys.modules, 'pipeline.text_pretrain' in sys.modules)")
    proc = run_py("-c", code, cwd=tmp_path)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr
    assert "`cooldown.lr`" in proc.stderr


def test_stage_with_good_params_checks_before_importing_the_stage(tmp_path):
    """Good params: main() hands the loaded Config to the stage's run(); torch is still not loaded
    when the stage module is asked for (the stage import is stubbed: nothing trains)."""
    (tmp_path / "params.yaml").write_text(PARAMS.read_text())
    code = (
        "import sys, types, importlib\n"
        "import pipeline.__main__ as m\n"
        "def fake(name):\n"
        "    print('import', name, 'torch' in sys.modules)\n"
        "    return types.SimpleNamespace(run=lambda cfg: print('run', type(cfg).__name__, cfg.seed))\n"
        "m.importlib = types.SimpleNamespace(import_module=fake)\n"
        "print('rc', m.main(['text-pretrain']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**ENV, "LOCAL_RANK": "0"},
                          capture_output=True, text=True, timeout=60)  # a process the launcher started
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["import pipeline.text_pretrain False", "run Config 0", "rc 0"]

    proc = run_py("-m", "pipeline", "no-such-stage", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: python -m pipeline STAGE")


# Runs main() with os.execv stubbed: prints the launcher's arguments instead of starting it; argv[1]
# is the number of GPUs torch.cuda.device_count() reports.
LAUNCH = """
import os, sys
import torch
torch.cuda.device_count = lambda: int(sys.argv[1])
os.execv = lambda exe, args: print("execv", exe == sys.executable, *args[1:])
from pipeline.__main__ import main
print("rc", main(["text-pretrain"]))
"""


@pytest.mark.parametrize(("nproc", "gpus", "n"), [(1, 4, "1"), (2, 0, "2"), ("auto", 0, "1"), ("auto", 4, "4")])
def test_a_launched_stage_starts_composer_with_train_nproc_processes(tmp_path, nproc, gpus, n):
    """`python -m pipeline text-pretrain` hands itself to Composer's launcher (this Python's), with
    `train.nproc` processes: a number as written; "auto" one per GPU, one on a machine without."""
    (tmp_path / "params.yaml").write_text(PARAMS.read_text().replace("  nproc: 1 ", f"  nproc: {nproc} "))
    proc = run_py("-c", LAUNCH, str(gpus), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    auto = " (train.nproc: auto)" if nproc == "auto" else ""
    assert proc.stdout.splitlines() == [f"text-pretrain: composer -n {n} -m pipeline text-pretrain{auto}",
                                        f"execv True -m composer.cli.launcher -n {n} -m pipeline text-pretrain",
                                        "rc None"]


def test_auto_processes_that_cannot_split_a_batch_fail_at_launch(tmp_path):
    """The batch check of "auto" waits for the GPUs to be counted, then fails as the params check does."""
    (tmp_path / "params.yaml").write_text(PARAMS.read_text().replace("  nproc: 1 ", "  nproc: auto "))
    proc = run_py("-c", LAUNCH, "3", cwd=tmp_path)
    assert proc.stdout.splitlines() == ["rc 2"], proc.stdout + proc.stderr
    assert proc.stderr.startswith("text-pretrain: bad params (train.nproc auto: 3 processes on this machine), "
                                  "nothing was run:\n")
    assert "params.yaml: `pretrain.batch_size` 16 is not divisible by `train.nproc` 3" in proc.stderr


# ---- 4. the schema agrees with the code and the file -------------------------------------------

def test_presets_match_the_model():
    from vlm.model.lm import PRESETS  # imports torch (a few seconds)

    assert set(config.PRESETS) == set(PRESETS)
    assert len(config.PRESETS) == len(PRESETS)


def test_vocab_constants_match_the_tokenizer():
    from vlm.data import tokenizer

    assert config.MIN_VOCAB == tokenizer.MIN_VOCAB
    assert config.SPECIAL_TOKENS == len(tokenizer.SPECIAL_TOKENS)


def leaves(node: Any, prefix: str = "") -> set[str]:
    if not isinstance(node, dict):
        return {prefix}
    return set().union(*(leaves(v, f"{prefix}{k}.") for k, v in node.items())) if node else set()


def test_schema_and_committed_file_have_the_same_keys():
    schema_leaves = {k for k in ALL_KEYS if "[]" not in k and not any(other.startswith(k + ".") for other in ALL_KEYS)}
    schema_leaves |= {k for k in ALL_KEYS if k.startswith("prepare.files.") and "[]" not in k}  # lists, [] here
    file_leaves = {k.rstrip(".") for k in leaves(RAW)}
    assert schema_leaves == file_leaves
    assert len(ALL_KEYS) == len(set(ALL_KEYS))
    sections = {k for k in ALL_KEYS if "[]" not in k} - schema_leaves
    top = {k for k in ALL_KEYS if "." not in k and isinstance(RAW[k], dict)}
    assert sections == top | {"vision.tiny", "prepare.files"}
