"""Greedy decoding as `evaluate` runs it (`vlm.evaluation.scoring.generate`), with the KV cache and
without it (every step recomputes the whole prefix), side by side on the same model and prompts.

The model is a randomly initialised VLM: the LM of the named preset at GPT-NeoX's vocabulary and a
small open_clip ViT whose patches stand in for an image's tokens (decode time does not depend on
what the weights learnt). The prompts are questions of different lengths about different images, in
one left-padded batch; both runs must give the same answers. On a GPU (`device` cuda) the model runs
in bf16 autocast, as `evaluate` runs it there.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import asdict, dataclass

import numpy as np
import open_clip
import torch
from PIL import Image

from vlm.data.batches import Collator
from vlm.data.tokenizer import Codec, train_tokenizer
from vlm.evaluation.scoring import generate
from vlm.model.lm import lm_config
from vlm.model.vision import build_clip, image_tensor, preprocess_config, tiny_clip_config
from vlm.model.vlm import build_vlm

QUESTIONS = ("what colour is the square?", "how many shapes are there in the picture?",
             "is there a small green circle to the left of the big red triangle in this image?")


@dataclass(frozen=True)
class DecodeBench:
    preset: str = "79m"
    vocab_size: int = 50_283
    image_size: int = 64
    patch_size: int = 8  # (64 / 8)^2 = 64 image tokens per prompt
    batch: int = 8
    new_tokens: int = 16
    repeats: int = 2


def _setup(b: DecodeBench):
    words = " ".join(QUESTIONS).replace("?", "").split()
    codec = Codec(train_tokenizer([" ".join(words[i:] + words[:i]) for i in range(len(words))], 300,
                                  show_progress=False))
    torch.manual_seed(0)
    clip = build_clip(tiny_clip_config(image_size=b.image_size, patch_size=b.patch_size, width=64, layers=2, heads=2,
                                       embed_dim=32, vocab_size=codec.vocab_size, context_length=12,
                                       pad_id=codec.ids["pad"], eos_id=codec.ids["eos"]))
    open_clip.set_model_preprocess_cfg(clip, preprocess_config(b.image_size))
    cfg = lm_config(b.preset, max(b.vocab_size, codec.vocab_size), 1024)
    vlm = build_vlm(cfg, clip, codec.ids["image"], freeze_encoder=True).eval()
    with torch.no_grad():  # the eos row never wins, so every run decodes all `new_tokens`
        vlm.lm.lm_head.weight[codec.ids["eos"]] = 0.0
    to_tensor = functools.partial(image_tensor, preprocess_cfg=preprocess_config(b.image_size))
    collate = Collator(codec.ids, vlm.num_image_tokens, to_tensor)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (b.image_size, b.image_size, 3), dtype=np.uint8))
              for _ in range(b.batch)]
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(b.batch)]
    return vlm, collate, codec, questions, images


def measure(b: DecodeBench, device: str = "cpu") -> dict:
    """Seconds per batch (the best of `repeats`) and answer tokens per second, cached and uncached."""
    vlm, collate, codec, questions, images = _setup(b)
    vlm = vlm.to(device)
    out: dict = {"setup": {**asdict(b), "device": device, "threads": torch.get_num_threads(),
                           "params": sum(p.numel() for p in vlm.lm.parameters())}}
    autocast = (functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16) if device == "cuda"
                else contextlib.nullcontext)
    answers = {}
    for name, use_cache in (("uncached", False), ("cached", True)):
        times = []
        for _ in range(b.repeats):
            t0 = time.perf_counter()
            with autocast():
                answers[name] = generate(vlm, collate, codec, questions, images, b.new_tokens, use_cache=use_cache)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[name] = {"seconds": min(times), "tokens_per_sec": b.batch * b.new_tokens / min(times)}
    out["same_answers"] = answers["cached"] == answers["uncached"]
    out["speedup"] = out["uncached"]["seconds"] / out["cached"]["seconds"]
    return out
