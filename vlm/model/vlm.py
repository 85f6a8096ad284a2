"""The VLM: image patch features, projected by an MLP, take the place of image placeholder tokens.

As in the study: penultimate-layer patch features of a (frozen) image encoder, a two-layer GELU MLP
into the LM's embedding space, image tokens placed where the sequence has them (before the caption),
plain causal attention. The loss on text tokens only is `masked_lm_loss` with a loss mask that is 0
on image positions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlm.model.lm import LM, KVCache, LMConfig
from vlm.model.vision import PatchEncoder


class Projector(nn.Module):
    """The two-layer MLP, plus a learned embedding of each image token's place in the image (zero at
    the start). The LM's rotary positions are relative: from an answer token they tell how far back
    an image token is, which depends on the question's length, not which patch it is."""

    def __init__(self, vision_width: int, d_model: int, num_tokens: int):
        super().__init__()
        self.fc1 = nn.Linear(vision_width, d_model)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_model, d_model)
        self.place = nn.Parameter(torch.zeros(num_tokens, d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x))) + self.place


class VLM(nn.Module):
    def __init__(self, lm: LM, encoder: PatchEncoder, image_token_id: int):
        super().__init__()
        if not 0 <= image_token_id < lm.cfg.vocab_size:
            raise ValueError(
                f"image_token_id {image_token_id} is outside the vocabulary of {lm.cfg.vocab_size}"
            )
        self.lm = lm
        self.encoder = encoder
        self.projector = Projector(encoder.width, lm.cfg.d_model, encoder.num_patches)
        self.image_token_id = image_token_id
        self.num_image_tokens = encoder.num_patches
        # Under FSDP every process must reduce the same gradients in every step: a process whose
        # (micro)batch holds no image then runs the image path on a blank image, weighted 0, so the
        # projector (and an unfrozen encoder) get zero gradients there rather than none. Set by
        # vlm.training.trainer.make_trainer.
        self.every_step_images = False

    def fsdp_wrap_fn(self, module: nn.Module) -> bool:
        """FSDP's units: the LM's blocks (LM.fsdp_wrap_fn); the image encoder and the projector stay
        with the root, whose weights every process gathers in every step (see `every_step_images`)."""
        return self.lm.fsdp_wrap_fn(module)

    def image_embeds(self, images: Tensor) -> Tensor:
        """Pixels (n, 3, H, W), or cached encoder features (n, N, width) -> (n, N, d_model)."""
        feats = images if images.dim() == 3 else self.encoder(images)
        return self.projector(feats)

    def forward(
        self, input_ids: Tensor, images: Tensor | None = None, pad_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Logits (B, T, vocab_size).

        Every sample with an image holds `num_image_tokens` consecutive `image_token_id`s (the
        collator expands one placeholder); `images` holds those samples' images in batch order, as
        pixels or as cached `encoder` outputs (a frozen encoder gives the same features every epoch).
        `cache`: decoding with a KV cache (LM.forward_embeds); the images go with the prompt's call.
        """
        embeds = self.lm.embed(input_ids)
        is_image = input_ids == self.image_token_id
        n_placeholders = int(is_image.sum())
        n_images = 0 if images is None else images.shape[0]
        if n_placeholders != n_images * self.num_image_tokens:
            raise ValueError(
                f"{n_placeholders} image placeholder tokens for {n_images} images; expected "
                f"{self.num_image_tokens} per image ({n_images * self.num_image_tokens} in all)"
            )
        per_sample = is_image.sum(dim=1)
        if bool((per_sample % self.num_image_tokens).any()):
            raise ValueError(
                f"a sample's image placeholder count {per_sample.tolist()} is not a multiple of "
                f"{self.num_image_tokens} (the encoder's patches per image)"
            )
        if n_images:
            # masked_scatter fills the True positions in row-major order: sample by sample, left to right.
            feats = self.image_embeds(images).to(embeds.dtype)
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), feats)
        elif self.every_step_images and self.training:
            embeds = embeds + 0.0 * self.image_embeds(self.encoder.blank()).sum().to(embeds.dtype)
        return self.lm.forward_embeds(embeds, pad_mask, cache)


def build_vlm(lm_cfg: LMConfig, clip_model: nn.Module, image_token_id: int, freeze_encoder: bool) -> VLM:
    """A fresh LM, the penultimate-layer patch encoder of `clip_model.visual` and a new projector."""
    encoder = PatchEncoder(clip_model.visual)
    if freeze_encoder:
        encoder.freeze()
    return VLM(LM(lm_cfg), encoder, image_token_id)
