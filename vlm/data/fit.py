"""Instruction conversations cut to the model's context at shard time, never at training time.

In the model a sample is its tokens with each [image] placeholder expanded to the encoder's image
tokens (`shard.image_tokens`); the LM takes at most `vlm.config.MAX_SEQ_LEN` positions. A longer
conversation (LLaVA-665k has chats of thousands of tokens; SigLIP at 384 px alone takes 729) would
stop fine-tuning with an error after the whole text run. So stream-shard keeps the longest run of
leading whole turns that fits, ending on an answer's [eos]: the trailing turns are dropped, and at
least the first answer is kept. A sample whose first answer does not fit is skipped. Both are
counted in metrics/shards.json.
"""

from __future__ import annotations

import numpy as np


def model_lengths(ids: np.ndarray, image_id: int, image_tokens: int) -> np.ndarray:
    """The model length of every prefix ids[:k + 1] (placeholders expanded to `image_tokens`)."""
    return np.arange(1, len(ids) + 1) + np.cumsum(ids == image_id) * (image_tokens - 1)


def fit_conversation(ids: np.ndarray, mask: np.ndarray, eos_id: int, image_id: int, image_tokens: int,
                     max_len: int) -> int:
    """How many leading tokens of a conversation to keep: all of them when it fits, else up to the
    end of its last whole answer that fits (an answer ends with a loss-masked [eos]); 0 when even
    the first answer does not fit (the sample is skipped)."""
    lengths = model_lengths(ids, image_id, image_tokens)
    if not len(ids) or lengths[-1] <= max_len:
        return len(ids)
    turn_ends = np.flatnonzero((ids == eos_id) & (mask == 1)) + 1
    fitting = turn_ends[lengths[turn_ends - 1] <= max_len]
    return int(fitting[-1]) if len(fitting) else 0
