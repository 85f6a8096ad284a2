"""Batches from the MDS shards: the collator, single and mixed StreamingDatasets, Composer DataSpecs."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from composer.core import DataSpec
from composer.utils import dist
from PIL import Image
from streaming import Stream, StreamingDataLoader, StreamingDataset
from streaming.base.util import clean_stale_shared_memory

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


# Where a training stage reads one source's shards: its local folder (data/shards/<source>), or
# (local cache folder, remote URL) to stream them from object storage.
Source = Path | tuple[Path, str | None]


@functools.cache
def _clean_shared_memory_once() -> None:
    """Streaming's leftovers of a crashed run, removed once per process before its first dataset
    (not before each: that would unlink the shared memory of the datasets already built)."""
    clean_stale_shared_memory()


def _location(src: Source) -> dict[str, str | None]:
    local, remote = src if isinstance(src, tuple) else (src, None)
    return {"local": str(local), "remote": remote}


# Streaming prepares samples ahead in two background threads that, once `predownload` samples are
# ready, poll every 7 ms until training catches up. On a small CPU those wake-ups preempt torch's
# threads: the text-pretrain step ran at 0.86-0.91 of a bare loop's speed with them, 1.00-1.06
# without (`make bench`). Shards that are all local need no download, so there the threads prepare
# the whole epoch at once and exit; shards streamed from a remote keep Streaming's bounded default.
LOCAL_PREDOWNLOAD = 1 << 40


def _predownload(sources: list[Source]) -> int | None:
    return LOCAL_PREDOWNLOAD if all(_location(s)["remote"] is None for s in sources) else None


def dataset(src: Source, split: str, batch_size: int, seed: int, shuffle: bool = True) -> StreamingDataset:
    """One source's split; `batch_size` is this process's share of the global batch."""
    _clean_shared_memory_once()
    return StreamingDataset(
        **_location(src), split=split, batch_size=batch_size, shuffle=shuffle, shuffle_seed=seed,
        predownload=_predownload([src]),
    )


def mixed_dataset(parts: dict[Source, int], split: str, batch_size: int, seed: int, epoch_size: int):
    """Stratified mix: every global batch holds exactly `parts[src]` samples of that source.

    `parts` counts samples of the global batch; `batch_size` is this process's share of it (Streaming
    splits each stratified global batch over the processes).
    """
    _clean_shared_memory_once()
    global_batch = sum(parts.values())
    streams = [
        Stream(**_location(src), split=split, proportion=count / global_batch)
        for src, count in parts.items()
        if count > 0
    ]
    return StreamingDataset(
        streams=streams,
        batch_size=batch_size,
        batching_method="stratified",
        shuffle=True,
        shuffle_seed=seed,
        epoch_size=epoch_size,
        predownload=_predownload(list(parts)),
    )


def loader(ds: StreamingDataset, collate: Collator, batch_size: int, split_by_length: bool = False) -> DataSpec:
    """A Composer DataSpec over a StreamingDataLoader (whose position Composer checkpoints).

    `split_by_length`: microbatches of short and long rows (`Collator.split`), in one process only:
    each process would cut its rows elsewhere, into a different number of microbatches, and DDP
    needs the same number on every process.
    """
    if split_by_length and dist.get_world_size() > 1:
        split_by_length = False
        if dist.get_global_rank() == 0:
            print(f"train.split_by_length is off with {dist.get_world_size()} processes (DDP needs the same "
                  "microbatches on every process)", flush=True)
    dl = StreamingDataLoader(ds, batch_size=batch_size, collate_fn=collate, num_workers=0)
    pad = collate.ids["pad"]
    return DataSpec(
        dl,
        split_batch=functools.partial(collate.split, by_length=split_by_length),
        get_num_samples_in_batch=lambda b: int(b["input_ids"].shape[0]),
        get_num_tokens_in_batch=lambda b: {
            "total": int(real_tokens(b, pad).sum()),
            "loss_generating": int(b["loss_mask"][:, 1:].sum()),  # the targets masked_lm_loss averages over
        },
    )


class CaptionCollator:
    """Caption shard samples -> {"images", "text"} for the SigLIP encoder's own training.

    The text tower reads our token ids: the caption and its eos (the LM format's [bos] [image]
    prefix dropped), cut or right-padded to `context_length` with eos kept last.
    """

    def __init__(self, ids: dict[str, int], context_length: int, to_tensor: Callable):
        self.ids, self.context_length, self.to_tensor = ids, context_length, to_tensor

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        text = torch.full((len(samples), self.context_length), self.ids["pad"], dtype=torch.long)
        for i, s in enumerate(samples):
            caption = np.asarray(s["tokens"])[2:-1][: self.context_length - 1]
            ids = np.concatenate([caption, [self.ids["eos"]]]).astype(np.int64)
            text[i, : len(ids)] = torch.from_numpy(ids)
        images = self.to_tensor([decode_image(s["image"]) for s in samples])
        return {"images": images, "text": text}
