"""The params schema: one frozen dataclass per section of params.yaml, checked before any work.

`load()` reads params.yaml once and returns a `Config`; every stage's `run(cfg)` takes it. Checks:
types (booleans strictly: "false" is not a boolean), ranges and allowed values per field, unknown
keys (with a "did you mean"), missing keys, then the rules that tie fields together (ratios that
sum above 1, a branch fraction that is not a saved branch point, ...). All problems are reported
at once, each naming its dotted key. This module imports no torch, so a bad value fails in well
under a second (`python -m pipeline.check_params`), and nothing of the library: the schema is the
lowest layer (tests/test_layers.py).

Why not pydantic (installed anyway, as a dependency of our dependencies): it would replace only the
generic type and range checking (`_check_value`, `build` and helpers, about 110 of these lines);
the dataclasses, the cross-field rules and the loader stay, so the file would not shrink by half.
Every message would need translating back into today's wording (tests/test_config.py pins them),
and its import adds 0.05 s to the check's 0.07 s (median of 15 starts, 2-core CPU).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
PRESETS = ("tiny", "79m", "1.4b")  # the LM shapes of vlm/model/lm.py (a test keeps the two in step)
SPECIAL_TOKENS = 6  # bos, eos, pad, image, user, assistant (vlm/data/tokenizer.py)
MIN_VOCAB = SPECIAL_TOKENS + 256  # the special tokens plus the byte alphabet of a byte-level BPE
MAX_SEQ_LEN = 2048  # the LM's RoPE table; every stage's sequences stay below it


class ParamError(ValueError):
    """A value in params.yaml is missing, unknown, of the wrong type or out of range."""


def spec(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
         choices: tuple | None = None, exists: str | None = None, auto: bool = False,
         default: Any = dataclasses.MISSING) -> Any:
    """Field metadata: inclusive bounds (`lo_open` excludes `lo`), allowed values, or a path that
    must exist (`exists` = "file", "dir" or "any") when it is not null; `auto`: an integer field that
    also takes "auto" (decided at run time). Only the entries of a source list have defaults (a key
    left out takes it); every section key must be written out."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "exists": exists, "auto": auto}
    return field(default=default, metadata=meta)


# Where users put their own files, tracked with `dvc add` (README, "Bring your own data"). Each
# folder is a DVC dependency of the one stage that reads it, so replacing a file re-runs that stage
# and what follows; a path in params.yaml outside its folder is refused.
USER_DATA = "inputs/data"  # prepare: corpora, image-caption sets, instructions, evaluation sets
USER_TOKENIZER = "inputs/tokenizer"  # tokenize: a tokenizer.json
USER_ENCODER = "inputs/encoder"  # train-encoder: pretrained open_clip weights
COCO_VAL = "COCO_val2014_{image_id:012d}.jpg"  # VQAv2's image file names

# The sizes of the synthetic world's fact tables (vlm/data/world.py: ATTRIBUTES, FACT_TEMPLATES), which
# the check of `prepare.n_text_docs` needs; the schema imports nothing of the library, and
# tests/test_world.py keeps these numbers in step with the tables.
WORLD_ATTRIBUTES = 3  # facts per creature
WORLD_TEMPLATES = 4  # sentence templates per fact, the QA form included


def min_text_docs(n_creatures: int) -> int:
    """Documents the synthetic world needs to state every fact of every creature in every template:
    each document carries >= 2 fact sentences and facts are dealt round-robin."""
    return -(-WORLD_ATTRIBUTES * n_creatures * WORLD_TEMPLATES // 2)


@dataclass(frozen=True)
class TextSource:
    """A text corpus: JSONL (optionally .zst) or Parquet, one document per record (DCLM)."""

    path: str = spec()  # a file or a glob, under inputs/data/
    format: str = spec(choices=("auto", "jsonl", "parquet"), default="auto")  # auto: from the extension
    field: str = spec(default="text")  # the document's field or column


@dataclass(frozen=True)
class CaptionSource:
    """Image-caption pairs: WebDataset tars (DataComp), Parquet with image bytes, or a JSONL/CSV of
    image file names and captions beside a folder of images."""

    path: str = spec()
    format: str = spec(choices=("auto", "webdataset", "parquet", "jsonl", "csv"), default="auto")
    caption: str = spec(default="caption")  # caption field/column (WebDataset: key of the .json; a .txt wins)
    image: str = spec(default="image")  # Parquet: image bytes column; JSONL/CSV: image file name column
    image_root: str | None = spec(default=None)  # folder the file names are relative to (default: the file's)


@dataclass(frozen=True)
class InstructSource:
    """LLaVA conversations: a JSON list (or JSONL) of {id, image?, conversations}."""

    path: str = spec()
    image_root: str | None = spec(default=None)  # folder `image` is relative to (default: the file's)


@dataclass(frozen=True)
class VqaSource:
    """VQAv2: questions and annotations JSON, images named from `image_id` by `image_pattern`."""

    questions: str = spec()
    annotations: str = spec()
    image_root: str = spec()
    image_pattern: str = spec(default=COCO_VAL)


@dataclass(frozen=True)
class PopeSource:
    """POPE: JSONL of {question_id?, image, text, label yes/no}. Each split (random, popular,
    adversarial) is its own task, `pope_<split>`; files without a split make the task `pope`."""

    path: str = spec()
    image_root: str | None = spec(default=None)
    split: str | None = spec(default=None)  # null: random/popular/adversarial if the file name says so


@dataclass(frozen=True)
class McSource:
    """ARC-style multiple choice JSONL: {question, choices {text, label}, answerKey} (HF ai2_arc), or
    the original {question {stem, choices [{label, text}]}, answerKey}."""

    path: str = spec()


@dataclass(frozen=True)
class FilesConfig:
    """The user's own sources, per role (used when `prepare.source` is files). Each role lists any
    number of sources; a glob is expanded in sorted order."""

    text: list[TextSource] = spec()
    captions: list[CaptionSource] = spec()
    instruct: list[InstructSource] = spec()
    vqa: list[VqaSource] = spec()
    pope: list[PopeSource] = spec()
    text_mc: list[McSource] = spec()


SOURCE_ROLES = ("text", "captions", "instruct")  # training sources: each needs at least one
EVAL_ROLES = ("vqa", "pope", "text_mc")  # evaluation tasks: at least one


@dataclass(frozen=True)
class PrepareConfig:
    """What `prepare` writes to data/raw: the embedded synthetic world (docs/world.md; the `n_*`
    keys and `text_instruct_share`) or the user's files (`files`), checked and normalised."""

    source: str = spec(choices=("synthetic", "files"))
    max_bad_fraction: float = spec(0.0, 1.0)  # skipped share of one source above which prepare fails
    files: FilesConfig = spec()
    n_text_docs: int = spec(1)
    n_creatures: int = spec(2)  # at least one instruction creature and one evaluation creature
    n_instruct_creatures: int = spec(1)
    n_images: int = spec(1)
    n_instruct: int = spec(1)
    text_instruct_share: float = spec(0.0, 1.0)
    n_eval: int = spec(1)
    image_size: int = spec(16)  # synthetic images, and the input size of the tiny encoder

    @property
    def n_text_instruct(self) -> int:
        return round(self.n_instruct * self.text_instruct_share)


@dataclass(frozen=True)
class TokenizeConfig:
    vocab_size: int = spec(MIN_VOCAB)
    tokenizer: str | None = spec(exists="file")


@dataclass(frozen=True)
class ShardConfig:
    seq_len: int = spec(8, MAX_SEQ_LEN)
    val_fraction: float = spec(0.0, 0.5, lo_open=True)
    # The image encoder's tokens per image: instruction samples are cut to MAX_SEQ_LEN positions with
    # them (vlm/data/fit.py). Checked against the encoder: by the params check for the tiny one, by
    # train-encoder for a pretrained one.
    image_tokens: int = spec(1, MAX_SEQ_LEN - 1)
    # Object storage the shards are also uploaded to, and the training stages stream from
    # (e.g. s3://bucket/vlm/shards; credentials and endpoint from the AWS_* / S3_ENDPOINT_URL env).
    remote: str | None = spec()


@dataclass(frozen=True)
class ModelConfig:
    preset: str = spec(choices=PRESETS)


@dataclass(frozen=True)
class TinyEncoderConfig:
    """The tiny SigLIP-style open_clip encoder train-encoder builds when `vision.pretrained` is null."""

    patch_size: int = spec(1)
    width: int = spec(1)
    layers: int = spec(2)  # the VLM reads the penultimate block
    heads: int = spec(1)
    embed_dim: int = spec(1)
    steps: int = spec(1)
    batch_size: int = spec(2)  # the SigLIP loss needs negatives
    lr: float = spec(0.0, 1.0, lo_open=True)


@dataclass(frozen=True)
class VisionConfig:
    # An open_clip model name (e.g. ViT-B-16-SigLIP) whose weights `pretrained` holds; null: `pretrained`
    # is a folder in open_clip's local-dir layout (open_clip_config.json + weights), or null itself.
    model: str | None = spec()
    pretrained: str | None = spec(exists="any")
    freeze: bool = spec()
    # With `freeze`: encode each distinct image once (stage encode-images) and look its features up in
    # training and evaluation; a trained encoder (freeze false) always encodes as it goes.
    cache_features: bool = spec()
    blank_images: bool = spec()
    tiny: TinyEncoderConfig = spec()

    @property
    def cached_features(self) -> bool:
        """Whether the stages read data/features instead of running the encoder on every image."""
        return self.freeze and self.cache_features


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = spec(1)
    batch_size: int = spec(1)
    lr: float = spec(0.0, 1.0, lo_open=True)
    warmup_steps: int = spec(0)
    final_lr_ratio: float = spec(0.0, 1.0)
    weight_decay: float = spec(0.0)
    branch_points: list[float] = spec(0.0, 1.0, lo_open=True)
    # Also save Adam's moments at each branch point (twice the weights' size), so a cooldown can
    # carry them (`branch.optimizer: carry`) as the paper's continued run does.
    save_optimizer: bool = spec()

    def branch_steps(self) -> dict[float, int]:
        """{fraction: step} of every branch point (each lands on a whole step: checked by `load`)."""
        return {float(f): round(f * self.steps) for f in self.branch_points}


@dataclass(frozen=True)
class BranchConfig:
    fraction: float = spec(0.0, 1.0)
    # Re-warm the cooldown's LR (to `cooldown.rewarm_lr`) or continue from the branch's LR. auto:
    # re-warm at 0.0 (from scratch, LR 0) and 1.0 (the finished run, LR decayed), as the paper does.
    rewarm: bool | str = spec(choices=("auto", True, False), auto=True)
    # Adam's state at the branch: reset (fresh moments, every fraction alike) or carry the text run's
    # (at 0.0 there is none to carry: the same as reset).
    optimizer: str = spec(choices=("reset", "carry"))

    def rewarms(self) -> bool:
        """Whether the cooldown re-warms its LR at this branch."""
        return self.fraction in (0.0, 1.0) if self.rewarm == "auto" else bool(self.rewarm)


@dataclass(frozen=True)
class CooldownConfig:
    steps: int = spec(1)
    batch_size: int = spec(1)
    image_ratio: float = spec(0.0, 1.0)
    instruct_ratio: float = spec(0.0, 1.0)
    rewarm_lr: float = spec(0.0, 1.0, lo_open=True)
    warmup_steps: int = spec(0)
    final_lr_ratio: float = spec(0.0, 1.0)


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = spec(1)
    batch_size: int = spec(1)
    lr: float = spec(0.0, 1.0, lo_open=True)
    warmup_steps: int = spec(0)
    final_lr_ratio: float = spec(0.0, 1.0)


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = spec(1)  # questions per batch of greedy decoding
    max_new_tokens: int = spec(1)
    max_samples: int = spec(0)  # items per task, a seeded stratified subset (0 = all)
    device: str = spec(choices=("auto", "cpu", "cuda"))  # auto: this process's GPU when there is one


@dataclass(frozen=True)
class TrainConfig:
    """How the training stages run (text-pretrain, mixed-cooldown, finetune, evaluate): `python -m
    pipeline STAGE` starts them under Composer's launcher, `composer -n <processes>`. Every batch
    size stays the global batch; each process takes batch / processes of it (tests/test_multiprocess.py)."""

    # processes on this machine (GPUs on a GPU node; gloo processes on a CPU); "auto": one per GPU
    # of the machine, one on a machine without GPUs (pipeline/__main__.py counts them at launch)
    nproc: int | str = spec(1, auto=True)
    microbatch_size: int = spec(0)  # samples per forward/backward in each process (0 = its whole share)
    # Sort each process's rows by length and run the short and the long ones as two microbatches, each
    # padded only to its own longest row: less work, the same step (vlm/data/batches.py, Collator.split).
    # One process only: with several (DDP) it is off, as every process must run the same microbatches.
    split_by_length: bool = spec()
    # Shard the weights, gradients and optimizer state over the processes (FSDP2, through Composer's
    # parallelism_config) instead of a whole copy in each (DDP): for models whose training state does
    # not fit one GPU (the 1.4b preset). Each transformer block is one unit; the image encoder and the
    # projector stay with the root (vlm/model/vlm.py).
    fsdp: bool = spec()


@dataclass(frozen=True)
class CpuConfig:
    """What chooses the float rounding when torch computes on a CPU (README, "Reproducibility").
    Applied by `python -m pipeline` before torch loads; the same values give the same weights on
    the AVX2 CPUs of one vendor (tests/test_cpu_pinning.py; README, "Reproducibility across
    machines"). Listed as a param by every stage that computes with torch."""

    # torch threads per machine, shared by its processes (MKL's and ATen's sums split by thread, so
    # the core count would otherwise change results); 0 = every core (faster on a big CPU, its own rounding)
    threads: int = spec(0)
    # avx2: ATen, MKL (conditional numerical reproducibility) and oneDNN run their AVX2 kernels on
    # every CPU that has AVX2, AVX-512 ones included (MKL's are one only on Intel CPUs); compatible:
    # the same but MKL's COMPATIBLE branch, its path for every vendor, with fixed threads and oneDNN
    # and NNPACK off (slower; MKL's square root still most likely differs by vendor: README); native:
    # the best each CPU has
    kernels: str = spec(choices=("avx2", "compatible", "native"))


@dataclass(frozen=True)
class ResumeConfig:
    """Crash recovery. Not a result: no stage lists it as a DVC param, and a resumed run ends with
    the same weights as an uninterrupted one (tests/test_resume.py)."""

    checkpoint_interval: int = spec(0)  # steps between resume checkpoints; 0 = none
    # Where they live, in <folder>/<stage>/<fingerprint>/: a folder of the repository (this machine's
    # disk), an absolute path on a file system that every node and every later job sees, or an
    # s3:// URI (a copy of this repository's checkpoints/ kept there), so that a job restarted on
    # other nodes resumes too.
    folder: str = spec()


@dataclass(frozen=True)
class StudyConfig:
    """Seed repeats of a named study (studies.yaml, `python -m pipeline.study`)."""

    seed: int = spec(0)  # read only by mixed-cooldown and finetune: repeats share the text run
    repeats: int = spec(1)  # study seeds per variant (0 .. repeats - 1); read by the study runner only
    # Whole chains per variant, each with its own `seed` (seed, seed + 1, ...: a new world draw,
    # encoder and text run), every one with `repeats` study seeds; read by the study runner only.
    chain_seeds: int = spec(1)
    alpha: float = spec(0.0, 0.5, lo_open=True)  # the level of the report's two-sided tests


@dataclass(frozen=True)
class Config:
    seed: int = spec(0)
    prepare: PrepareConfig = spec()
    tokenize: TokenizeConfig = spec()
    shard: ShardConfig = spec()
    model: ModelConfig = spec()
    vision: VisionConfig = spec()
    pretrain: PretrainConfig = spec()
    branch: BranchConfig = spec()
    cooldown: CooldownConfig = spec()
    finetune: FinetuneConfig = spec()
    evaluate: EvaluateConfig = spec()
    train: TrainConfig = spec()
    cpu: CpuConfig = spec()
    resume: ResumeConfig = spec()
    study: StudyConfig = spec()

    @property
    def branch_seed(self) -> int:
        """The seed of the branch-dependent stages (cooldown and fine-tuning: projector init, data
        order): `seed` itself at study seed 0, so the default run is one seeded chain; a stream of
        its own for every other study seed."""
        return self.seed if self.study.seed == 0 else self.seed + 1_000_003 * self.study.seed


# ---- building and checking ----------------------------------------------------------------------

def _keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config class, sections included (for "did you mean")."""
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        out.append(key)
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out += _keys(hint, key + ".")
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            out += _keys(typing.get_args(hint)[0], key + "[].")  # a list of sources: `files.text[].path`
    return out


ALL_KEYS = _keys(Config)


def _type_name(hint: Any, auto: bool = False) -> str:
    if hint is bool:
        return "a boolean (true/false)" + (' or "auto"' if auto else "")
    if hint is int:
        return "an integer" + (' or "auto"' if auto else "")
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if typing.get_origin(hint) is list:
        return "a list of numbers"
    return "a mapping"


def _check_value(key: str, value: Any, hint: Any, meta: dict, errors: list[str]) -> Any:
    """The value converted to the field's type (int -> float), or None with an error appended."""
    if meta.get("auto"):  # `int | str` or `bool | str`: a value of the other type, or "auto"
        if value == "auto":
            return value
        hint = next(arm for arm in typing.get_args(hint) if arm is not str)
    optional = isinstance(hint, types.UnionType)  # `str | None`: an optional path
    if optional:
        if value is None or value == "":
            return None
        hint = str
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint)
    if typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        if value is None:
            return []
        if not isinstance(value, list):
            errors.append(f"`{key}` must be a list of sources (each a mapping), got {value!r}")
            return None
        items = [build(typing.get_args(hint)[0], v, f"{key}[{i}].", errors) for i, v in enumerate(value)]
        return None if None in items else items
    if typing.get_origin(hint) is list:
        if not isinstance(value, list) or not value:
            errors.append(f"`{key}` must be a non-empty list of numbers, got {value!r}")
            return None
        items = [_check_value(f"{key}[{i}]", v, float, meta, errors) for i, v in enumerate(value)]
        return None if None in items else items
    if not ok:
        hint_text = ""
        if hint is float and isinstance(value, str) and _is_number(value):
            hint_text = f"; YAML reads {value} as text: write it with a decimal point, e.g. {float(value)!r}"
        expected = _type_name(hint, bool(meta.get("auto"))) + (" or null" if optional else "")
        errors.append(f"`{key}` must be {expected}, got {value!r} ({type(value).__name__}){hint_text}")
        return None
    if hint is float:
        value = float(value)
        if not math.isfinite(value):
            errors.append(f"`{key}` must be a finite number, got {value!r}")
            return None
    lo, hi, choices, exists = meta.get("lo"), meta.get("hi"), meta.get("choices"), meta.get("exists")
    if choices is not None and value not in choices:
        errors.append(f"`{key}` must be one of {list(choices)}, got {value!r}")
        return None
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        errors.append(f"`{key}` must be {'>' if meta.get('lo_open') else '>='} {lo}, got {value!r}")
        return None
    if hi is not None and value > hi:
        errors.append(f"`{key}` must be <= {hi}, got {value!r}")
        return None
    if exists:
        path = Path(value)
        if not {"file": path.is_file, "dir": path.is_dir, "any": path.exists}[exists]():
            kind = {"file": "file", "dir": "folder", "any": "file or folder"}[exists]
            errors.append(f"`{key}` names {value!r}, which is not an existing {kind}")
            return None
    return value


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _did_you_mean(key: str) -> str:
    """Up to three known keys a mistyped one may have meant: close spellings in its own section,
    then names in that section that contain it (`cooldown.lr` -> `cooldown.rewarm_lr`, ...), then
    close keys anywhere (`pretrian.steps` -> `pretrain.steps`)."""
    if key in ALL_KEYS:  # `pretrain.lr: 0.1` written at the top level, as `dvc exp run -S` spells it
        return f"; nest it: `{key.split('.')[-1]}` under `{key.rsplit('.', 1)[0]}:`"
    section, _, leaf = key.rpartition(".")
    prefix = section + "." if section else ""
    generic = re.sub(r"\[\d+\]", "[]", prefix)  # the entries of a source list share their keys
    siblings = [k[len(generic):] for k in ALL_KEYS if k.startswith(generic) and "." not in k[len(generic):]]
    close = difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)
    close = close or [s for s in siblings if leaf in s or s in leaf][:3]
    found = [prefix + c for c in close] or difflib.get_close_matches(key, ALL_KEYS, n=3, cutoff=0.8)
    return "; did you mean " + " or ".join(f"`{k}`" for k in found) + "?" if found else ""


def build(cls: type, raw: Any, prefix: str, errors: list[str]) -> Any:
    """An instance of the config dataclass `cls` from a mapping, appending every problem to `errors`."""
    if not isinstance(raw, dict):
        errors.append(f"`{prefix.rstrip('.') or 'params'}` must be a mapping, got {raw!r}")
        return None
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            errors.append(f"`{prefix}{key}` is not a known param{_did_you_mean(prefix + str(key))}")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in raw:
            if f.default is dataclasses.MISSING:
                errors.append(f"`{key}` is missing")
            else:
                values[f.name] = f.default
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            values[f.name] = build(hint, raw[f.name], key + ".", errors)
        else:
            values[f.name] = _check_value(key, raw[f.name], hint, dict(f.metadata), errors)
    if len(values) < len(names) or any(v is None and not _optional(hints[k]) for k, v in values.items()):
        return None
    return cls(**values)


def _optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def cross_checks(cfg: Config) -> list[str]:
    """The rules that tie params together (each message names the keys involved)."""
    errors = []
    p, pt, cd, vt = cfg.prepare, cfg.pretrain, cfg.cooldown, cfg.vision.tiny
    if p.n_instruct_creatures > p.n_creatures - 1:
        errors.append(f"`prepare.n_instruct_creatures` must be <= `prepare.n_creatures` - 1 = {p.n_creatures - 1} "
                      f"(at least one creature is kept for evaluation), got {p.n_instruct_creatures}")
    need = min_text_docs(p.n_creatures)
    if p.source == "synthetic" and p.n_text_docs < need:
        errors.append(f"`prepare.n_text_docs` must be >= {need} to state every fact of {p.n_creatures} creatures "
                      f"in every template, got {p.n_text_docs}")
    if pt.warmup_steps > pt.steps:
        errors.append(f"`pretrain.warmup_steps` {pt.warmup_steps} is longer than `pretrain.steps` {pt.steps}")
    for f in pt.branch_points:
        if abs(round(f * pt.steps) - f * pt.steps) > 1e-6:
            errors.append(f"`pretrain.branch_points`: {f} of `pretrain.steps` {pt.steps} is not a whole step "
                          f"({f * pt.steps:g}); choose steps divisible accordingly")
    if len(set(pt.branch_points)) != len(pt.branch_points):
        errors.append(f"`pretrain.branch_points` has duplicates: {pt.branch_points}")
    valid = sorted({0.0, *pt.branch_points})
    if not any(abs(cfg.branch.fraction - f) < 1e-9 for f in valid):
        errors.append(f"`branch.fraction` {cfg.branch.fraction} is not a saved branch point; valid values: {valid} "
                      "(0.0 = from scratch; add it to `pretrain.branch_points` to branch elsewhere)")
    if cfg.branch.optimizer == "carry" and not pt.save_optimizer:
        errors.append("`branch.optimizer` carry needs the text run's Adam moments: set `pretrain.save_optimizer` "
                      "true (or `branch.optimizer` reset)")
    if pt.save_optimizer and cfg.train.fsdp:
        errors.append("`pretrain.save_optimizer` is not supported with `train.fsdp` (sharded Adam moments are not "
                      "gathered at the branch points yet): set it false")
    if cd.image_ratio + cd.instruct_ratio > 1 + 1e-9:
        errors.append(f"`cooldown.image_ratio` + `cooldown.instruct_ratio` = {cd.image_ratio + cd.instruct_ratio:g}"
                      " > 1 (the rest of the cooldown is text)")
    active = sum(r > 0 for r in (1 - cd.image_ratio - cd.instruct_ratio, cd.image_ratio, cd.instruct_ratio))
    if cd.batch_size < active:
        errors.append(f"`cooldown.batch_size` {cd.batch_size} is smaller than the {active} mixed sources")
    if cd.warmup_steps > cd.steps:
        errors.append(f"`cooldown.warmup_steps` {cd.warmup_steps} is longer than `cooldown.steps` {cd.steps}")
    if cfg.train.nproc != "auto":  # else checked at launch, once the GPUs are counted
        errors += batch_split_errors(cfg, cfg.train.nproc)
    remote = cfg.shard.remote
    if remote is not None and "://" not in remote and not Path(remote).is_absolute():
        errors.append(f"`shard.remote` must be a URL such as s3://bucket/path (or an absolute folder), got {remote!r}")
    folder = cfg.resume.folder
    if "://" in folder and not (folder.startswith("s3://") and folder[5:].strip("/")):
        errors.append(f"`resume.folder` must be a folder or an s3://bucket/path URI (no other object store), "
                      f"got {folder!r}")
    if p.source == "files":
        errors += _files_checks(p.files)
    for key, folder in (("tokenize.tokenizer", USER_TOKENIZER), ("vision.pretrained", USER_ENCODER)):
        if (value := section(cfg, key)) is not None and not _under(value, folder):
            errors.append(f"`{key}` must be a path under {folder}/ (the folder its stage declares as a DVC "
                          f"dependency, so replacing the file re-runs what depends on it), got {value!r}")
    if cfg.vision.model is not None and cfg.vision.pretrained is None:
        errors.append(f"`vision.model` {cfg.vision.model!r} needs `vision.pretrained`, the local checkpoint of its "
                      "weights (nothing is ever downloaded)")
    if cfg.vision.pretrained is None:
        if vt.width % vt.heads:
            errors.append(f"`vision.tiny.width` {vt.width} is not divisible by `vision.tiny.heads` {vt.heads}")
        if p.image_size % vt.patch_size:
            errors.append(f"`prepare.image_size` {p.image_size} is not divisible by "
                          f"`vision.tiny.patch_size` {vt.patch_size}")
        elif cfg.shard.image_tokens != (grid := (p.image_size // vt.patch_size) ** 2):
            errors.append(f"`shard.image_tokens` {cfg.shard.image_tokens} must be the tiny encoder's patches per "
                          f"image: (prepare.image_size {p.image_size} / vision.tiny.patch_size {vt.patch_size})^2 "
                          f"= {grid}")
    return errors


def _under(path: str, folder: str) -> bool:
    """`path` (relative, no `..` escaping) lies inside `folder`."""
    norm = Path(os.path.normpath(path))
    return not norm.is_absolute() and (norm == Path(folder) or Path(folder) in norm.parents)


def _files_checks(files: FilesConfig) -> list[str]:
    """`prepare.source: files`: the roles that must be present, and every path under inputs/data/.
    Whether the paths exist is checked by `prepare` itself, before it reads anything."""
    errors = []
    for role in SOURCE_ROLES:
        if not getattr(files, role):
            errors.append(f"`prepare.files.{role}` lists no source; `prepare.source: files` needs text, "
                          "captions and instruct sources (README, \"Bring your own data\")")
    if not any(getattr(files, role) for role in EVAL_ROLES):
        errors.append(f"`prepare.files` lists no evaluation source: give at least one of {', '.join(EVAL_ROLES)}")
    for role in SOURCE_ROLES + EVAL_ROLES:
        for i, src in enumerate(getattr(files, role)):
            for name, value in dataclasses.asdict(src).items():
                key = f"prepare.files.{role}[{i}].{name}"
                if name in ("path", "questions", "annotations", "image_root") and value is not None:
                    if not _under(value, USER_DATA):
                        errors.append(f"`{key}` must be a path under {USER_DATA}/ (prepare's DVC dependency; "
                                      f"put the file there, e.g. with `dvc add`), got {value!r}")
            if role == "vqa":
                try:
                    src.image_pattern.format(image_id=0)
                except (KeyError, IndexError, ValueError) as e:
                    errors.append(f"`prepare.files.vqa[{i}].image_pattern` {src.image_pattern!r} must name the "
                                  f"image from `{{image_id}}` (e.g. {COCO_VAL!r}): {e!r}")
    return errors


def parse(raw: Any, source: str = PARAMS_FILE) -> Config:
    """A checked Config from an already-read params mapping; ParamError lists every problem."""
    errors: list[str] = []
    cfg = build(Config, raw, "", errors)
    if cfg is not None and not errors:
        errors = cross_checks(cfg)
    if errors:
        raise ParamError("\n".join(f"{source}: {e}" for e in errors))
    return cfg


def load(path: str | Path = PARAMS_FILE) -> Config:
    """Read and check params.yaml (YAML's safe loader: plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: params file not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ParamError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except yaml.YAMLError as e:
        mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        if context:
            where += f" ({e.context} at line {context.line + 1})"
        raise ParamError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from e
    return parse(raw, str(path))


def batch_split_errors(cfg: Config, nproc: int) -> list[str]:
    """What stops `nproc` processes on this machine from splitting every global batch evenly."""
    errors = []
    for key in ("pretrain.batch_size", "cooldown.batch_size", "finetune.batch_size"):
        share = section(cfg, key) // nproc
        if cfg.train.microbatch_size > share:
            errors.append(f"`train.microbatch_size` {cfg.train.microbatch_size} is larger than a process's share of "
                          f"`{key}` ({section(cfg, key)} / `train.nproc` {nproc} = {share})")
        if section(cfg, key) % nproc:
            errors.append(f"`{key}` {section(cfg, key)} is not divisible by `train.nproc` {nproc}: the "
                          "global batch is split evenly over the training processes (batch / nproc each)")
    return errors


def section(cfg: Config, dotted: str) -> Any:
    """`section(cfg, "vision.freeze")` -> cfg.vision.freeze, as plain data (dicts for sections)."""
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return dataclasses.asdict(node) if dataclasses.is_dataclass(node) else node
