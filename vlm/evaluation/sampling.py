"""`evaluate.max_samples`: a seeded subset of a big evaluation set, stratified so that it keeps the
set's mix (VQA's answer types, POPE's yes/no labels)."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np


def subsample(items: list[dict], n: int, seed: int, name: str, stratum: Callable[[dict], str]) -> list[dict]:
    """`n` of `items` (all of them when n is 0 or not smaller), in their original order.

    Each stratum gets n * its share, rounded down, and the strata with the largest remainders one
    more (ties: by name); its items are drawn without replacement by a generator seeded from
    `seed` and the task's `name`, so every task draws independently and the same seed draws the same.
    """
    if n <= 0 or n >= len(items):
        return list(items)
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(stratum(it), []).append(i)
    quota = {s: n * len(idx) / len(items) for s, idx in groups.items()}
    take = {s: int(q) for s, q in quota.items()}
    for s in sorted(quota, key=lambda s: (take[s] - quota[s], s))[: n - sum(take.values())]:
        take[s] += 1
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    chosen = [idx[j] for s, idx in sorted(groups.items()) for j in rng.choice(len(idx), take[s], replace=False)]
    return [items[i] for i in sorted(chosen)]
