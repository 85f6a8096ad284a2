"""Helpers the stage entry points share."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from pathlib import Path

import torch
import yaml
from composer.utils import dist

from pipeline.paths import LOGS, METRICS, TIMINGS, TOKENS
from vlm.config import MAX_SEQ_LEN, Config, section
from vlm.data.batches import Collator
from vlm.data.features import FeatureStore
from vlm.data.tokenizer import Codec
from vlm.io import write_json
from vlm.model.lm import LM, lm_config
from vlm.model.vision import image_tensor, load_clip, preprocess_cfg_of
from vlm.model.vlm import VLM, build_vlm
from vlm.training.resume import Resume, fingerprint
from vlm.training.trainer import seed_everything

DVC_FILE = Path("dvc.yaml")


def codec() -> Codec:
    return Codec.from_file(TOKENS / "tokenizer.json")


def new_lm(preset: str, vocab_size: int, seed: int) -> LM:
    """A freshly initialised LM; the same seed gives the same weights (the text run's step 0)."""
    seed_everything(seed)
    return LM(lm_config(preset, vocab_size, MAX_SEQ_LEN))


def build_vlm_from(lm: LM, encoder_dir: Path, cdc: Codec, freeze: bool, seed: int) -> VLM:
    """The VLM of the cooldown: `lm`'s weights, the open_clip encoder folder, a new projector."""
    clip, _ = load_clip(encoder_dir)
    seed_everything(seed)
    vlm = build_vlm(lm.cfg, clip, cdc.ids["image"], freeze)
    vlm.lm.load_state_dict(lm.state_dict())
    return vlm


def image_collator(cdc: Codec, vlm: VLM, blank: bool = False, features: FeatureStore | None = None) -> Collator:
    """A Collator that expands image placeholders for `vlm` and gives it each image as its encoder
    expects it (preprocessed), or as the encoder's cached output with a feature store."""
    pp = preprocess_cfg_of(vlm.encoder.visual)
    to_tensor = functools.partial(image_tensor, preprocess_cfg=pp)
    return Collator(cdc.ids, vlm.num_image_tokens, to_tensor, blank_images=blank, features=features)


def feature_store(cfg: Config, folder: Path, encoder_dir: Path) -> FeatureStore | None:
    """The cached features of `encoder_dir` in `folder` (encode-images) when `vision.cache_features`
    applies (a frozen encoder), else None: the stage encodes every image as it goes."""
    if not cfg.vision.cached_features:
        return None
    store = FeatureStore(folder, encoder_dir)
    print(f"using the frozen encoder's cached features of {len(store.row_of):,} images ({folder})", flush=True)
    return store


def resume_for(stage: str, cfg: Config) -> Resume:
    """Where `stage` keeps its resume checkpoints: keyed by the params and deps dvc.yaml gives it.
    Global rank 0 alone reads the deps (at scale, terabytes of shards) and hands the key to the
    other processes, on every node."""
    key = [None]
    if dist.get_global_rank() == 0:
        spec = yaml.safe_load(DVC_FILE.read_text())["stages"][stage]
        params = {name: section(cfg, name) for name in spec.get("params", [])}
        key = [fingerprint(params, [Path(d) for d in spec["deps"]])]
    dist.broadcast_object_list(key, src=0)
    return Resume.of(stage, key[0], cfg.resume.checkpoint_interval, cfg.resume.folder)


def curve_paths(stage: str) -> dict[str, Path]:
    """The curve CSV (a DVC plot) and its wall-clock twin (not a DVC output) of a training stage."""
    return {"curves": LOGS / f"{stage}.csv", "timings": TIMINGS / f"{stage}.csv"}


# The packages whose versions a result records (metrics/<stage>.json, "environment").
RECORDED_PACKAGES = ("torch", "mosaicml", "mosaicml-streaming", "open-clip-torch", "tokenizers", "dvc", "numpy")


def environment(device: str = "auto") -> dict:
    """What a training or evaluation result was made with: Python and package versions (pinned by
    requirements.lock) and the device: on a CPU, ATen's kernel level and the threads per machine, which
    choose the float rounding (the `cpu` params fix both). Nothing machine-specific beyond that, so that the same
    results on another machine give the same dvc.lock; the machine itself goes to timings/."""
    env = {"python": platform.python_version(),
           **{name: importlib.metadata.version(name) for name in RECORDED_PACKAGES}}
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return {**env, "device": torch.cuda.get_device_name(), "cuda": torch.version.cuda}
    # threads per machine, as `cpu.threads` counts them: N processes of one machine share them
    threads = torch.get_num_threads() * dist.get_local_world_size()
    return {**env, "device": "cpu", "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": threads}


def machine() -> dict:
    """The machine a stage ran on (timings/ only: it differs between machines that agree on results)."""
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    return {"cpu": model, "cores": os.cpu_count()}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return ""


def write_metrics(stage: str, results: dict, seconds: float) -> None:
    """Results and their environment to metrics/<stage>.json (DVC-hashed); the wall-clock time and
    the machine to timings/<stage>.json."""
    write_json(METRICS / f"{stage}.json", {**results, "environment": environment()})
    write_json(TIMINGS / f"{stage}.json", {"seconds": round(seconds, 1), "machine": machine()})
