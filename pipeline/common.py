"""Helpers the training and evaluation entry points share."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from pipeline.paths import TOKENS
from vlm.data.tokenizer import Codec
from vlm.model.lm import LM, lm_config
from vlm.model.vision import image_tensor, load_clip, preprocess_cfg_of
from vlm.model.vlm import VLM, build_vlm
from vlm.training.data import Collator
from vlm.training.trainer import seed_everything

MAX_SEQ_LEN = 2048  # RoPE table size; every stage's sequences stay below it


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


def image_collator(cdc: Codec, vlm: VLM, blank: bool = False) -> Collator:
    """A Collator that expands image placeholders for `vlm` and preprocesses images as its encoder expects."""
    pp = preprocess_cfg_of(vlm.encoder.visual)
    to_tensor = functools.partial(image_tensor, preprocess_cfg=pp)
    return Collator(cdc.ids, vlm.num_image_tokens, to_tensor, blank_images=blank)


def composer_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model weights inside a Composer checkpoint, without the adapter's `module.` prefix."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["model"]
    return {k.removeprefix("module."): v for k, v in state.items()}
