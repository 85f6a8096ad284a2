"""Training data from the MDS shards: single and mixed StreamingDatasets, Composer DataSpecs, the
encoder's caption batches (the batch format itself is vlm/data/batches.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from composer.core import DataSpec
from composer.utils import dist
from streaming import Stream, StreamingDataLoader, StreamingDataset

from vlm.data.batches import Collator, decode_image, real_tokens
from vlm.training.shared_memory import remove_stale_segments, remove_unused_filelocks

# Where a training stage reads one source's shards: its local folder (data/shards/<source>), or
# (local cache folder, remote URL) to stream them from object storage.
Source = Path | tuple[Path, str | None]


@functools.cache
def _remove_stale_shared_memory_once() -> None:
    """Streaming's leftovers of killed runs, and the file locks of ended ones, removed once per process
    before its first dataset.

    Safe beside other runs, the other ranks of this one and this process's own datasets: only segments
    that no live process maps or has open go, and only locks of prefixes without a segment
    (vlm/training/shared_memory.py), unlike Streaming's own clean-up, which unlinks every segment.
    Once is enough: it scans /proc."""
    remove_stale_segments()
    remove_unused_filelocks()


# Tries at registering a dataset's shared-memory prefix when this run is one process (`_streaming_dataset`).
PREFIX_TRIES = 3


def _streaming_dataset(**kwargs) -> StreamingDataset:
    """A StreamingDataset, its construction tried again when another process registered the same
    shared-memory prefix in the moment between Streaming's scan for a free one and its own register
    ("File exists: '/000990_locals'"; shared_memory.remove_unused_filelocks keeps that moment short).
    The failed try made nothing, and the next scan finds the prefix taken. Only a run of one process
    tries again: its ranks pass dist barriers inside the construction, which a rank's second try
    would put out of step."""
    for _ in range(PREFIX_TRIES - 1):
        try:
            return StreamingDataset(**kwargs)
        except FileExistsError as e:
            if dist.get_world_size() > 1:
                raise
            print(f"Streaming's shared-memory prefix was taken by another process ({e}); trying again",
                  flush=True)
    return StreamingDataset(**kwargs)


def _location(src: Source) -> dict[str, str | None]:
    """Streaming's arguments for a source; a remote one has every downloaded shard checked against
    the sha1 its index holds (a shard changed or cut short on the way fails loudly)."""
    local, remote = src if isinstance(src, tuple) else (src, None)
    return {"local": str(local), "remote": remote, "validate_hash": "sha1" if remote else None}


# Streaming prepares samples ahead in two background threads that, once `predownload` samples are
# ready, poll every 7 ms until training catches up. On a small CPU those wake-ups preempt torch's
# threads: the text-pretrain step ran at 0.86-0.91 of a bare loop's speed with them, 1.00-1.06
# without (`make bench`). Shards that are all local need no download, so there the threads prepare
# the whole epoch at once and exit; shards streamed from a remote keep Streaming's bounded default.
LOCAL_PREDOWNLOAD = 1 << 40

# Streaming shuffles and splits an epoch over "canonical nodes", by default as many as the run has
# physical nodes: the same params on 2 nodes would then train on other batches than on 1. Fixed at
# one, every layout (1 node of 2 processes, 2 nodes of 1, ...) sees the same global batches in the
# same order (tests/test_two_nodes.py), and a run resumes on another number of nodes.
CANONICAL_NODES = 1


def _predownload(sources: list[Source]) -> int | None:
    return LOCAL_PREDOWNLOAD if all(_location(s)["remote"] is None for s in sources) else None


def dataset(src: Source, split: str, batch_size: int, seed: int, shuffle: bool = True) -> StreamingDataset:
    """One source's split; `batch_size` is this process's share of the global batch."""
    _remove_stale_shared_memory_once()
    return _streaming_dataset(
        **_location(src), split=split, batch_size=batch_size, shuffle=shuffle, shuffle_seed=seed,
        predownload=_predownload([src]), num_canonical_nodes=CANONICAL_NODES,
    )


def mixed_dataset(parts: dict[Source, int], split: str, batch_size: int, seed: int, epoch_size: int):
    """Stratified mix: every global batch holds exactly `parts[src]` samples of that source.

    `parts` counts samples of the global batch; `batch_size` is this process's share of it (Streaming
    splits each stratified global batch over the processes).
    """
    _remove_stale_shared_memory_once()
    global_batch = sum(parts.values())
    streams = [
        Stream(**_location(src), split=split, proportion=count / global_batch)
        for src, count in parts.items()
        if count > 0
    ]
    return _streaming_dataset(
        streams=streams,
        batch_size=batch_size,
        batching_method="stratified",
        shuffle=True,
        shuffle_seed=seed,
        epoch_size=epoch_size,
        predownload=_predownload(list(parts)),
        num_canonical_nodes=CANONICAL_NODES,
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
    return data_spec(dl, collate, split_by_length)


def data_spec(dl: Iterable, collate: Collator, split_by_length: bool = False) -> DataSpec:
    """Composer's view of batches `collate` made: how to cut microbatches (`Collator.split`) and how
    many samples and loss tokens each holds (make_trainer weights losses by them)."""
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
