"""The batch format training and evaluation share: shard samples -> padded token rows, loss masks and
the images' model input (pixels, or a frozen encoder's cached features); Composer microbatches."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from vlm.data.features import FeatureStore
from vlm.io import open_rgb

TEXT, CAPTION, INSTRUCT = 0, 1, 2  # sample kinds, as counted by TokenShare
KIND_NAMES = {TEXT: "text", CAPTION: "captions", INSTRUCT: "instruct"}


GREY = (128, 128, 128)  # the blank image of the control run


def decode_image(data: bytes) -> Image.Image:
    """A shard's image bytes as an upright RGB image."""
    return open_rgb(io.BytesIO(data))


def blank_like(image: Image.Image) -> Image.Image:
    """A uniform grey image of the same size: the control run's stand-in for `image`."""
    return Image.new("RGB", image.size, GREY)


class Collator:
    """Turns shard samples into a right-padded batch.

    Each sample's single [image] placeholder becomes `num_image_tokens` placeholders (loss 0), and
    its image goes into `images` in sample order: decoded and preprocessed into pixels, or, with a
    `features` store (a frozen encoder), as its cached encoder features. `blank_images` replaces
    every image by a uniform grey one: the control run of an honest world (design.md).
    """

    def __init__(
        self,
        ids: dict[str, int],
        num_image_tokens: int = 0,
        to_tensor: Callable[[list[Image.Image]], torch.Tensor] | None = None,
        blank_images: bool = False,
        features: FeatureStore | None = None,
    ):
        self.ids, self.n_img, self.to_tensor, self.blank = ids, num_image_tokens, to_tensor, blank_images
        self.features = features

    def expand(self, tokens: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """(tokens, mask, has_image) with the placeholder repeated `num_image_tokens` times."""
        (pos,) = np.nonzero(tokens == self.ids["image"])
        if len(pos) == 0:
            return tokens, mask, False
        if len(pos) > 1 or self.n_img == 0 or (self.to_tensor is None and self.features is None):
            raise ValueError(f"sample has {len(pos)} image placeholders but the model takes {self.n_img} images")
        p = int(pos[0])
        tokens = np.concatenate([tokens[:p], np.full(self.n_img, self.ids["image"], tokens.dtype), tokens[p + 1 :]])
        mask = np.concatenate([mask[:p], np.zeros(self.n_img, mask.dtype), mask[p + 1 :]])
        return tokens, mask, True

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        seqs, masks, images, kinds = [], [], [], []
        for s in samples:
            tokens, mask, has_image = self.expand(np.asarray(s["tokens"]), np.asarray(s["mask"]))
            if has_image:
                images.append(s["image"])
            kinds.append(INSTRUCT if self.ids["user"] in tokens else CAPTION if has_image else TEXT)
            seqs.append(tokens)
            masks.append(mask)
        length = max(len(t) for t in seqs)
        input_ids = torch.full((len(seqs), length), self.ids["pad"], dtype=torch.long)
        loss_mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, (t, m) in enumerate(zip(seqs, masks, strict=True)):
            input_ids[i, : len(t)] = torch.from_numpy(t.astype(np.int64))
            loss_mask[i, : len(m)] = torch.from_numpy(m.astype(np.int64))
        batch = {"input_ids": input_ids, "loss_mask": loss_mask, "kind": torch.tensor(kinds, dtype=torch.long)}
        if images:
            batch["images"] = self.image_input(images)
        return batch

    def image_input(self, images: Sequence[bytes | Image.Image]) -> torch.Tensor:
        """The model's input for image files (bytes) or decoded images: their cached encoder features
        (n, patches, width) with a feature store, else their pixels (n, 3, H, W)."""
        if self.features is not None:
            return self.features(images, blank=self.blank)
        return self.pixels([decode_image(im) if isinstance(im, bytes) else im for im in images])

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """The model's image input for `images`: blanked when `blank_images`, then preprocessed.

        Training batches and evaluation prompts both go through here, so the control run blanks
        every image the model ever sees.
        """
        if self.to_tensor is None:
            raise ValueError("this collator has no image preprocessing (to_tensor) for a text-only model")
        if self.blank:
            images = [blank_like(im) for im in images]
        return self.to_tensor(images)

    def split(self, batch: dict, microbatch_size: int, by_length: bool = False) -> list[dict]:
        """Composer microbatches of at most `microbatch_size` rows, each with exactly the images of its
        rows and cut to its own longest row.

        `by_length`: the rows are first sorted by length and cut in two where that leaves the fewest
        padded positions. A cooldown batch mixes full-length text rows with short captions, and one
        padded batch computes every caption at the text's length. Neither cut changes the step:
        right padding changes no row's logits (causal attention), and Composer weights each
        microbatch's loss by its loss tokens (`make_trainer`), so the gradient is the whole batch's.
        """
        n = batch["input_ids"].shape[0]
        lengths = real_tokens(batch, self.ids["pad"])
        has_image = (batch["input_ids"] == self.ids["image"]).any(dim=1)
        image_of = torch.cumsum(has_image.long(), 0) - has_image.long()  # each row's index in `images`
        order = torch.argsort(lengths, stable=True) if by_length else torch.arange(n)
        groups = [(0, n)]
        if by_length and n > 1:
            cut = best_cut(lengths[order].tolist())
            groups = [(0, cut), (cut, n)] if cut else groups
        out = []
        for lo, hi in groups:
            for start in range(lo, hi, microbatch_size):
                rows = order[start : min(start + microbatch_size, hi)]
                width = int(lengths[rows].max())
                part = {k: v[rows][:, :width] if v.dim() == 2 else v[rows] for k, v in batch.items() if k != "images"}
                if "images" in batch and bool(has_image[rows].any()):
                    part["images"] = batch["images"][image_of[rows[has_image[rows]]]]
                out.append(part)
        return out


def best_cut(lengths: list[int]) -> int:
    """Where to cut ascending row lengths in two so that the rows padded to their group's longest
    hold the fewest positions; 0 when no cut saves any."""
    n = len(lengths)
    cost = [i * lengths[i - 1] + (n - i) * lengths[-1] for i in range(1, n)]
    best = min(range(len(cost)), key=cost.__getitem__) if cost else 0
    return best + 1 if cost and cost[best] < n * lengths[-1] else 0


def real_tokens(batch: dict, pad_id: int) -> torch.Tensor:
    """(B,) number of non-pad tokens of each sample (image placeholders count as tokens)."""
    return (batch["input_ids"] != pad_id).sum(dim=1)
