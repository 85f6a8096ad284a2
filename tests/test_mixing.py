"""From token shares to per-batch sample counts."""

from __future__ import annotations

import pytest

from vlm.data.mixing import batch_counts, token_shares

MEANS = {"text": 128.0, "captions": 16.0, "instruct": 40.0}


def test_token_shares():
    shares = token_shares({"text": 3, "captions": 8}, {"text": 128.0, "captions": 16.0})
    assert shares["text"] == pytest.approx(384 / 512) and shares["captions"] == pytest.approx(128 / 512)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_image_share_at_batch_32():
    means = {"text": 128.0, "captions": 16.0}
    counts = batch_counts({"text": 0.8, "captions": 0.2}, means, 32)
    assert counts == {"text": 11, "captions": 21}  # 21 * 16 / (21 * 16 + 11 * 128) = 0.193
    assert token_shares(counts, means)["captions"] == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize("batch", [8, 16, 32, 64])
@pytest.mark.parametrize("image_share", [0.05, 0.2, 0.5, 0.9])
def test_counts_sum_to_batch_and_are_the_best_match(batch, image_share):
    means = {"text": 128.0, "captions": 16.0}
    shares = {"text": 1 - image_share, "captions": image_share}
    counts = batch_counts(shares, means, batch)
    assert sum(counts.values()) == batch and min(counts.values()) >= 1
    error = abs(token_shares(counts, means)["captions"] - image_share)
    for c in range(1, batch):  # no other composition is closer
        other = token_shares({"text": batch - c, "captions": c}, means)["captions"]
        assert error <= abs(other - image_share) + 1e-12


@pytest.mark.parametrize("shares", [
    {"text": 1.0, "captions": 0.0, "instruct": 0.0},
    {"text": 0.0, "captions": 1.0, "instruct": 0.0},
    {"text": 0.6, "captions": 0.4, "instruct": 0.0},
    {"text": 0.7, "captions": 0.2, "instruct": 0.1},
    {"text": 0.998, "captions": 0.001, "instruct": 0.001},
])
def test_zero_shares_get_none_and_positive_shares_at_least_one(shares):
    counts = batch_counts(shares, MEANS, 16)
    assert list(counts) == list(shares)
    assert sum(counts.values()) == 16
    for name, share in shares.items():
        assert (counts[name] == 0) if share == 0 else (counts[name] >= 1)


def test_three_sources_close_to_request():
    shares = {"text": 0.5, "captions": 0.3, "instruct": 0.2}
    counts = batch_counts(shares, MEANS, 64)
    realised = token_shares(counts, MEANS)
    assert all(realised[k] == pytest.approx(shares[k], abs=0.02) for k in shares)


@pytest.mark.parametrize("shares", [
    {"text": 0.8, "captions": 0.1}, {"text": 0.8, "captions": 0.3}, {"text": 0.0},
])
def test_shares_must_sum_to_one(shares):
    with pytest.raises(ValueError, match="sum to 1"):
        batch_counts(shares, MEANS, 32)


def test_more_active_sources_than_batch_size():
    with pytest.raises(ValueError, match="batch size 2 is too small for 3"):
        batch_counts({"text": 0.5, "captions": 0.25, "instruct": 0.25}, MEANS, 2)


def test_inactive_sources_do_not_count_against_batch_size():
    assert batch_counts({"text": 0.5, "captions": 0.5, "instruct": 0.0}, MEANS, 2) == {
        "text": 1, "captions": 1, "instruct": 0}
