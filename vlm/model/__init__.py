"""Models in plain PyTorch: the OpenLM-style LM, the open_clip image encoder and the VLM joining them."""

from vlm.model.lm import LM, PRESETS, LMConfig, lm_config, masked_lm_loss, num_params
from vlm.model.vision import (
    PatchEncoder,
    build_clip,
    clip_siglip_loss,
    image_tensor,
    load_clip,
    preprocess_config,
    save_clip,
    tiny_clip_config,
)
from vlm.model.vlm import VLM, Projector, build_vlm

__all__ = [
    "LM",
    "LMConfig",
    "PRESETS",
    "PatchEncoder",
    "Projector",
    "VLM",
    "build_clip",
    "build_vlm",
    "clip_siglip_loss",
    "image_tensor",
    "lm_config",
    "load_clip",
    "masked_lm_loss",
    "num_params",
    "preprocess_config",
    "save_clip",
    "tiny_clip_config",
]
