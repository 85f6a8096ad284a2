"""From token shares (what params.yaml states) to per-batch sample counts (what Streaming mixes).

`cooldown.image_ratio` is the share of cooldown training TOKENS (image + caption tokens) that
come from image-caption samples. Streaming mixes *samples*, and a caption sample is much shorter
than a packed text row, so the shares are converted with the mean tokens per sample of each
source. Batches are stratified (every batch has the same composition), so the counts are whole
numbers per batch; we pick the composition whose token shares are closest to the requested ones
and report the share it implies (the realised share is measured again during training).
"""

from __future__ import annotations

from itertools import product


def token_shares(counts: dict[str, int], mean_tokens: dict[str, float]) -> dict[str, float]:
    tokens = {k: n * mean_tokens[k] for k, n in counts.items()}
    total = sum(tokens.values())
    return {k: t / total for k, t in tokens.items()}


def batch_counts(shares: dict[str, float], mean_tokens: dict[str, float], batch_size: int) -> dict[str, int]:
    """Samples per batch from each source whose token shares best match `shares` (sum 1).

    A source with share 0 gets no samples; a source with a positive share gets at least one, so
    it is never silently dropped (a ValueError says to raise the batch size instead).
    """
    if abs(sum(shares.values()) - 1.0) > 1e-6:
        raise ValueError(f"token shares must sum to 1, got {shares}")
    active = [k for k, s in shares.items() if s > 0]
    if len(active) > batch_size:
        raise ValueError(f"batch size {batch_size} is too small for {len(active)} mixed sources")
    best, best_err = None, float("inf")
    for combo in product(range(1, batch_size + 1), repeat=len(active) - 1):
        rest = batch_size - sum(combo)
        if rest < 1:
            continue
        counts = dict(zip(active, (*combo, rest), strict=True))
        realised = token_shares(counts, mean_tokens)
        err = max(abs(realised[k] - shares[k]) for k in active)
        if err < best_err:
            best, best_err = counts, err
    assert best is not None
    return {k: best.get(k, 0) for k in shares}
