"""Instruction conversations cut to the context at shard time (vlm/data/fit.py): LLaVA-shaped long
chats with SigLIP-384's 729 image tokens, in the model's 2048 positions."""

from __future__ import annotations

import numpy as np
import pytest

from vlm.config import MAX_SEQ_LEN
from vlm.data.fit import fit_conversation, model_lengths

BOS, USER, ASSISTANT, EOS, IMAGE, WORD = 0, 1, 2, 3, 4, 9
SIGLIP_384 = 729


def conversation(turns: list[tuple[int, int]], image_in_turn: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) as Codec.conversation lays them out: [bos] ([user] (image) question [assistant]
    answer [eos])*, for (question words, answer words) per turn."""
    ids, mask = [BOS], [0]
    for t, (q, a) in enumerate(turns):
        question = [USER] + ([IMAGE] if t == image_in_turn else []) + [WORD] * q + [ASSISTANT]
        answer = [WORD] * a + [EOS]
        ids += question + answer
        mask += [0] * len(question) + [1] * len(answer)
    return np.array(ids, np.int32), np.array(mask, np.uint8)


def fit(ids, mask, image_tokens=SIGLIP_384, max_len=MAX_SEQ_LEN) -> int:
    return fit_conversation(ids, mask, EOS, IMAGE, image_tokens, max_len)


def test_a_5000_token_chat_keeps_the_whole_turns_that_fit_with_729_image_tokens():
    turns = [(60, 140)] * 25  # 25 turns of 203 tokens and the image: 5,077 tokens, 5,805 positions
    ids, mask = conversation(turns)
    assert len(ids) > 5000
    keep = fit(ids, mask)
    kept = ids[:keep]
    assert ids[keep - 1] == EOS and mask[keep - 1] == 1  # ends on a whole answer
    assert model_lengths(kept, IMAGE, SIGLIP_384)[-1] <= MAX_SEQ_LEN
    # [bos], the image's 729 positions, then whole turns of 203: (2048 - 730) // 203 = 6 turns kept
    assert keep == 1 + 1 + 6 * 203
    assert len(kept) + 203 + SIGLIP_384 - 1 > MAX_SEQ_LEN  # a seventh would not fit
    assert (kept == IMAGE).sum() == 1  # the image stays with its turn


def test_a_chat_that_fits_is_kept_whole_to_the_last_position():
    ids, mask = conversation([(10, 10)] * 5)
    assert fit(ids, mask) == len(ids)
    room = MAX_SEQ_LEN - (SIGLIP_384 - 1)  # tokens that fit beside the image's extra positions
    ids, mask = conversation([(room - 6, 1)])  # [bos] [user] [image] question [assistant] a [eos]
    assert len(ids) == room and fit(ids, mask) == room  # exactly the context: kept whole
    ids, mask = conversation([(room - 5, 1)])  # one position over, and no earlier answer: skipped
    assert fit(ids, mask) == 0


def test_a_first_answer_longer_than_the_context_skips_the_sample():
    ids, mask = conversation([(10, 1400), (10, 10)])
    assert fit(ids, mask) == 0
    assert fit(ids, mask, image_tokens=4) == len(ids)  # with a tiny encoder's 4 tokens it fits


def test_text_only_chats_and_late_images_count_their_own_positions():
    ids, mask = conversation([(100, 100)] * 30, image_in_turn=None)  # no image: tokens only
    keep = fit(ids, mask)
    assert keep == 1 + 10 * 203 and (ids[:keep] != IMAGE).all()  # turns of 203 tokens
    ids, mask = conversation([(100, 100)] * 30, image_in_turn=3)  # the image in the 4th turn
    keep = fit(ids, mask)
    assert model_lengths(ids[:keep], IMAGE, SIGLIP_384)[-1] <= MAX_SEQ_LEN
    assert (ids[:keep] == IMAGE).sum() == 1 and keep == 1 + 6 * 203 + 1


@pytest.mark.parametrize("image_tokens", [1, 4, 64, 729])
def test_the_cut_is_the_longest_answer_end_that_fits(image_tokens):
    rng = np.random.default_rng(image_tokens)
    turns = [(int(q), int(a)) for q, a in rng.integers(1, 400, size=(20, 2))]
    ids, mask = conversation(turns)
    keep = fit(ids, mask, image_tokens)
    lengths = model_lengths(ids, IMAGE, image_tokens)
    ends = [i + 1 for i in range(len(ids)) if ids[i] == EOS and mask[i]]
    assert keep == max([e for e in ends if lengths[e - 1] <= MAX_SEQ_LEN], default=0)
