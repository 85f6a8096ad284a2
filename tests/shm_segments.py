"""Streaming's shared memory as the tests see it: which segments belong to the datasets that read a
given folder. Other runs on the machine (a study, the other test worker of `make test-all`) make
segments of their own, and a killed one leaves them stale; a test that checks what its own runs
left behind looks at its runs' segments only."""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from vlm.training.shared_memory import NAME, SHM


def streaming_names() -> set[str]:
    """Every Streaming segment in /dev/shm, of any run."""
    return {n for n in os.listdir(SHM) if NAME.fullmatch(n)}


def prefix(name: str) -> str:
    return name.split("_")[0]


def reading_prefixes(folders: dict[str, Path]) -> dict[str, set[str]]:
    """{name: shared memory prefixes of the StreamingDatasets, live or left behind, reading under that
    folder}: a dataset's `_locals` segment names its local folders."""
    found: dict[str, set[str]] = {name: set() for name in folders}
    for path in SHM.glob("*_locals"):
        with suppress(OSError):
            data = path.read_bytes()
            for name, folder in folders.items():
                if f"{folder}/".encode() in data:
                    found[name].add(prefix(path.name))
    return found


def segments(prefixes: set[str]) -> dict[str, int]:
    """{name: inode} of the Streaming segments with these prefixes."""
    return {n: (SHM / n).stat().st_ino for n in streaming_names() if prefix(n) in prefixes}
