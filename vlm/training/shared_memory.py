"""Streaming's shared memory left behind by killed runs, found and removed without touching live runs'.

A StreamingDataset keeps its state in POSIX shared memory, `/dev/shm/{prefix:06}_{name}`. A run killed
together with its Python resource tracker (a scheduler killing the job, Composer's launcher killing a
hung rank and its children) leaves its segments there: later datasets then skip that prefix or, when
streaming from a remote into the same local folder, fail with "Reused local directory". Streaming's own
clean-up (in `streaming.base.util`) unlinks every such segment on the machine, live runs' too: the ranks
of a run attach to their leader's segments by name, so a second run, or a test beside a run, could break
it. Here a segment is stale only if it is ours and no live process maps it or has it open: a live
dataset's creating process holds each of its segments for as long as another may attach to it by name.
Streaming's file locks in the temp folder, which it never removes, go once no segment has their prefix
(`remove_unused_filelocks`). Without /dev/shm and /proc (macOS) nothing is done.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import suppress
from pathlib import Path

from streaming.base.constant import SHM_TO_CLEAN

SHM, PROC = Path("/dev/shm"), Path("/proc")
NAME = re.compile(rf"\d{{6,}}_(?:{'|'.join(map(re.escape, SHM_TO_CLEAN))})")  # streaming.base.shared.prefix
# Streaming's file locks, `{tempdir}/{prefix:06}_{barrier,cache}_filelock` (streaming.base.constant)
FILELOCK = re.compile(r"(\d{6,})_(?:barrier|cache)_filelock")


def _held() -> set[str]:
    """The /dev/shm names that some live process maps (/proc/PID/maps) or has open (/proc/PID/fd)."""
    paths: set[str] = set()
    for pid in (p for p in PROC.iterdir() if p.name.isdigit()):
        with suppress(OSError):  # another user's process (unreadable), or one that has exited
            paths.update(line.split(maxsplit=5)[-1] for line in (pid / "maps").read_text().splitlines())
        with suppress(OSError):
            for fd in (pid / "fd").iterdir():
                with suppress(OSError):  # closed meanwhile
                    paths.add(os.readlink(fd))
    return {p.removeprefix(f"{SHM}/").removesuffix(" (deleted)") for p in paths if p.startswith(f"{SHM}/")}


def stale_segments() -> dict[str, int]:
    """{name: inode} of this user's Streaming segments that no live process holds."""
    if not (SHM.is_dir() and PROC.is_dir()):
        return {}
    listed = {}
    for entry in os.scandir(SHM):
        with suppress(FileNotFoundError):
            if NAME.fullmatch(entry.name) and (st := entry.stat(follow_symlinks=False)).st_uid == os.getuid():
                listed[entry.name] = st.st_ino
    # /proc is scanned after the listing: a segment made later is no candidate, one made earlier is held by now
    held = _held()
    return {name: ino for name, ino in listed.items() if name not in held}


def remove_stale_segments() -> list[str]:
    """Unlink the stale segments (`stale_segments`); returns their names."""
    removed = []
    for name, ino in sorted(stale_segments().items()):
        path = SHM / name
        try:
            if path.stat().st_ino == ino:  # not removed by someone else and made anew since
                path.unlink()
                removed.append(name)
        except FileNotFoundError:
            continue
    return removed


def remove_unused_filelocks(tmp: Path | None = None) -> list[str]:
    """Remove Streaming's file locks of prefixes that have no segment in /dev/shm; returns their names.

    Every StreamingDataset leaves its two lock files in the temp folder when it ends, and Streaming
    never removes them; a new dataset skips every prefix that has one. After many datasets (a CI run
    of the test suite reached prefix 990) each new one scans hundreds of prefixes before it registers
    the first free one (56 ms at 1050, measured on a 2-core EPYC), and two processes that start
    datasets within that window take the same prefix: one fails with "File exists: '/000990_locals'"
    (two test workers' identical pipelines did). Removing unused locks keeps prefixes low and the
    window short; `data.py` retries the rare collision left.

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
    used = {n.split("_")[0] for n in os.listdir(SHM) if NAME.fullmatch(n)}  # listed after the locks
    removed = []
    for name, (pre, ino) in sorted(locks.items()):
        with suppress(FileNotFoundError):
            if pre not in used and (tmp / name).stat().st_ino == ino:
                (tmp / name).unlink()
                removed.append(name)
    return removed
