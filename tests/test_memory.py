"""Readers iterate: the data stages' memory does not grow with the corpus (bench/data_memory.py).

The embedded default at 1x and 4x its `prepare` sizes, spread over the user formats, through
prepare (`source: files`), tokenize and stream-shard, each scale in a fresh process. 4x, not the
10x of `make bench`, keeps CI short: the bound is per added record, so a corpus held whole breaks
it at any scale. The shard size limit is 1 MB here, so the writer's one-shard buffer (64 MB by
default, the only buffer that grows with shard size) stays below the 1x input. What may grow is the
per-record index: lengths, and in `prepare` one entry per distinct instruction image; the bound
allows 100 bytes per added record. Holding a corpus whole (the documents as Python strings, the
token stream as one array, the conversations as dicts) costs several times that.
"""

from __future__ import annotations

import pytest

from bench.data_memory import report, run_scale

pytestmark = pytest.mark.bench

PER_RECORD_BYTES = 100


def test_memory_stays_flat_from_1x_to_4x_the_default():
    results = {scale: run_scale(scale, shard_mb=1) for scale in (1, 4)}
    print(report(results))
    small, big = results[1], results[4]
    assert big["records"] == 4 * small["records"] and big["all_records"] == 4 * small["all_records"]
    added_records = big["all_records"] - small["all_records"]  # documents, captions and conversations
    bound_mb = PER_RECORD_BYTES * added_records / 2**20
    for stage in ("prepare", "tokenize", "stream-shard"):
        growth = big[stage]["peak_traced_mb"] - small[stage]["peak_traced_mb"]
        assert growth < bound_mb, f"{stage}: peak grew {growth:.1f} MB from 1x to 4x (bound {bound_mb:.1f} MB)"
