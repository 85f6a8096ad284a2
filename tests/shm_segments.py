"""Streaming's shared memory as the tests see it: which segments belong to the datasets that read a
given folder. Other runs on the machine (a study, the other test worker of `make test-all`) make
segments of their own, and a killed one leaves them stale; a test that checks what its own runs
left behind looks at its runs' segments only."""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import suppress
from pathlib import Path

from vlm.training.shared_memory import NAME, SHM

# Streaming's file locks, `{tempdir}/{prefix:06}_{barrier,cache}_filelock` (streaming.base.constant)
FILELOCK = re.compile(r"(\d{6,})_(?:barrier|cache)_filelock")


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


def remove_unused_filelocks(tmp: Path | None = None) -> list[str]:
    """Remove Streaming's file locks of prefixes that have no segment in /dev/shm; returns their names.

    Every StreamingDataset leaves its two lock files in the temp folder when it ends, and a new dataset
    skips every prefix that has one. After many datasets (a CI run of the suite reached prefix 990)
    each new one scans hundreds of prefixes before it registers the first free one (56 ms at 1050,
    measured here), and two processes that start datasets within that window, as the two test workers'
    identical pipelines do, take the same prefix: one fails with "File exists: '/000990_locals'" (CI,
    stop 36). Removing unused locks keeps prefixes low and the window short.

    Safe beside live runs: a dataset registers its segments before it makes its locks and holds them
    until it ends, and no new dataset takes a prefix while its lock exists. So a lock listed before
    /dev/shm whose prefix then has no segment belongs to no live dataset, and none can take the prefix
    before it is gone. (A "node" with a /dev/shm of its own but this temp folder, as node 1 of
    tests/test_two_nodes.py, has its locks seen as unused: it runs one process, whose lock no other
    process contends, and a lock file gone is made anew when next taken.)
    """
    tmp = tmp or Path(tempfile.gettempdir())
    if not SHM.is_dir():
        return []
    locks = {}
    for entry in os.scandir(tmp):
        with suppress(FileNotFoundError):
            m = FILELOCK.fullmatch(entry.name)
            if m and (st := entry.stat(follow_symlinks=False)).st_uid == os.getuid():
                locks[entry.name] = (m.group(1), st.st_ino)
    used = {prefix(n) for n in streaming_names()}  # listed after the locks
    removed = []
    for name, (pre, ino) in sorted(locks.items()):
        with suppress(FileNotFoundError):
            if pre not in used and (tmp / name).stat().st_ino == ino:
                (tmp / name).unlink()
                removed.append(name)
    return removed
