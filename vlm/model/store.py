"""Save and load model weights between stages: `model.safetensors` + `config.json` in a folder.

safetensors writes no timestamps, so equal weights give equal files. A VLM folder records the
LM config and the image token id; its image encoder is rebuilt from the encoder folder
(open_clip `local-dir` layout) and then overwritten by the saved weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_model, save_file, save_model
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from vlm.model.lm import LM, LMConfig
from vlm.model.vision import load_clip
from vlm.model.vlm import VLM, build_vlm

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def full_weights(module: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole weights of a module that FSDP shards, on the first process (an empty dict on the
    others); None when it is not sharded (its own state dict is whole). Every process must call it:
    gathering the shards is a collective."""
    if not any(isinstance(p, DTensor) for p in module.parameters()):
        return None
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save(module: nn.Module, folder: Path, extra: dict | None = None,
         weights: dict[str, torch.Tensor] | None = None) -> None:
    """`weights`: what `full_weights` gathered when FSDP shards `module` (its own state otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    lm = module.lm if isinstance(module, VLM) else module
    config = {"kind": "vlm" if isinstance(module, VLM) else "lm", "lm": asdict(lm.cfg), **(extra or {})}
    if isinstance(module, VLM):
        config["image_token_id"] = module.image_token_id
    if weights is None:
        save_model(module, str(folder / WEIGHTS))
    else:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_config(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model config missing (was the stage that writes {folder} run?)")
    return json.loads(path.read_text())


def load_lm(folder: Path) -> LM:
    """An LM, or the language model inside a saved VLM."""
    config = read_config(folder)
    if config["kind"] == "vlm":
        raise ValueError(f"{folder} holds a VLM; use load_vlm")
    model = LM(LMConfig(**config["lm"]))
    load_model(model, str(folder / WEIGHTS))
    return model


def load_vlm(folder: Path, encoder_dir: Path, freeze_encoder: bool = True) -> VLM:
    config = read_config(folder)
    clip, _ = load_clip(encoder_dir)
    model = build_vlm(LMConfig(**config["lm"]), clip, config["image_token_id"], freeze_encoder)
    load_model(model, str(folder / WEIGHTS))
    return model
