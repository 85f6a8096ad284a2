"""Only stale Streaming shared memory is removed: never a segment a live process maps or has open.

The segments here use prefix 999990, far above the prefixes real Streaming runs take (the first free
ones from 0), so that these tests can run beside them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import pytest
from streaming.base.constant import SHM_TO_CLEAN

from vlm.training import data, shared_memory
from vlm.training.shared_memory import SHM, remove_stale_segments, remove_unused_filelocks, stale_segments

pytestmark = pytest.mark.skipif(not (SHM.is_dir() and Path("/proc").is_dir()), reason="needs /dev/shm and /proc")

PREFIX = "999990"

# Holds its first argument's segments mapped with the file descriptor closed (libc's mmap: Python's keeps
# a copy of the descriptor) and the rest open, not mapped; as plain files, without the resource tracker
# that would unlink them once this is killed.
HOLDER = textwrap.dedent("""
    import ctypes, mmap, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                              ctypes.c_int, ctypes.c_int, ctypes.c_long]
    mapped, opened = sys.argv[1].split(","), sys.argv[2].split(",")
    fds = []
    for path in mapped + opened:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.ftruncate(fd, 64)
        if path in mapped:
            addr = libc.mmap(None, 64, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
            assert addr not in (None, 2**64 - 1), os.strerror(ctypes.get_errno())  # MAP_FAILED
            os.close(fd)
        else:
            fds.append(fd)
    print("ready", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def names():
    """Names of /dev/shm files this test makes, removed afterwards whatever happened."""
    made: list[str] = []
    yield made
    for name in made:
        (SHM / name).unlink(missing_ok=True)


def make(names: list[str], name: str) -> Path:
    names.append(name)
    (SHM / name).write_bytes(b"\0" * 8)
    return SHM / name


def test_a_live_process_keeps_its_segments_and_a_killed_one_leaves_them_stale(names):
    mapped = [f"{PREFIX}_{n}" for n in SHM_TO_CLEAN[::2]]
    opened = [f"{PREFIX}_{n}" for n in SHM_TO_CLEAN[1::2]]
    names += mapped + opened
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, ",".join(str(SHM / n) for n in mapped),
                               ",".join(str(SHM / n) for n in opened)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"
        assert not set(remove_stale_segments()) & set(names), "removed a segment a live process holds"
        assert all((SHM / n).exists() for n in names)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert all((SHM / n).exists() for n in names), "a killed process's segments stay behind"
    assert set(names) <= set(stale_segments())
    assert set(names) <= set(remove_stale_segments())
    assert not any((SHM / n).exists() for n in names)


def test_a_segment_this_process_holds_stays(names):
    name = f"{PREFIX}_{SHM_TO_CLEAN[0]}"
    names.append(name)
    shm = SharedMemory(name, create=True, size=8)
    try:
        assert name not in remove_stale_segments() and (SHM / name).exists()
    finally:
        shm.close()
        shm.unlink()


def test_other_names_are_never_touched(names):
    others = [f"{PREFIX}_unknown", f"{PREFIX}_{SHM_TO_CLEAN[0]}.old", f"99_{SHM_TO_CLEAN[0]}",
              f"psm_{PREFIX}", f"x{PREFIX}_{SHM_TO_CLEAN[0]}"]
    for name in others:
        make(names, name)
    removed = remove_stale_segments()
    assert not set(removed) & set(others)
    assert all((SHM / n).exists() for n in others)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_another_users_segments_are_never_touched(names):
    name = f"{PREFIX}_{SHM_TO_CLEAN[-1]}"
    os.chown(make(names, name), 65534, 65534)
    assert name not in remove_stale_segments() and (SHM / name).exists()


def test_nothing_is_done_without_dev_shm_or_proc(names, monkeypatch, tmp_path):
    path = make(names, f"{PREFIX}_{SHM_TO_CLEAN[0]}")
    monkeypatch.setattr(shared_memory, "PROC", tmp_path / "no-proc")
    assert remove_stale_segments() == [] and path.exists()
    monkeypatch.setattr(shared_memory, "SHM", tmp_path / "no-shm")
    monkeypatch.setattr(shared_memory, "PROC", Path("/proc"))
    assert remove_stale_segments() == [] and path.exists()


def test_file_locks_go_only_where_their_prefix_has_no_segment(names, tmp_path):
    used, unused = PREFIX, str(int(PREFIX) + 1)
    make(names, f"{used}_{SHM_TO_CLEAN[0]}")
    locks = [f"{p}_{kind}_filelock" for p in (used, unused) for kind in ("barrier", "cache")]
    others = [f"{unused}_barrier_filelock.old", f"{unused}_other_filelock", f"x{unused}_cache_filelock"]
    for name in locks + others:
        (tmp_path / name).touch()
    assert remove_unused_filelocks(tmp_path) == [f"{unused}_barrier_filelock", f"{unused}_cache_filelock"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(locks[:2] + others)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_another_users_file_locks_are_never_touched(tmp_path):
    lock = tmp_path / f"{PREFIX}_cache_filelock"
    lock.touch()
    os.chown(lock, 65534, 65534)
    assert remove_unused_filelocks(tmp_path) == [] and lock.exists()


class _TakenPrefix:
    """StreamingDataset as it fails when another process registered its prefix first, `fails` times."""

    def __init__(self, fails: int):
        self.fails, self.calls = fails, 0

    def __call__(self, **kwargs):
        self.calls += 1
        if self.calls <= self.fails:
            raise FileExistsError(17, "File exists", "/000990_locals")
        return kwargs


def test_a_taken_prefix_is_tried_again_in_a_run_of_one_process(monkeypatch, capsys):
    taken = _TakenPrefix(fails=data.PREFIX_TRIES - 1)
    monkeypatch.setattr(data, "StreamingDataset", taken)
    assert data._streaming_dataset(local="x") == {"local": "x"} and taken.calls == data.PREFIX_TRIES
    assert capsys.readouterr().out.count("trying again") == data.PREFIX_TRIES - 1
    monkeypatch.setattr(data, "StreamingDataset", _TakenPrefix(fails=data.PREFIX_TRIES))
    with pytest.raises(FileExistsError):
        data._streaming_dataset(local="x")


def test_a_taken_prefix_is_not_tried_again_with_several_processes(monkeypatch):
    """Each rank passes dist barriers inside the construction: one rank's second try would desync them."""
    taken = _TakenPrefix(fails=1)
    monkeypatch.setattr(data, "StreamingDataset", taken)
    monkeypatch.setattr(data.dist, "get_world_size", lambda: 2)
    with pytest.raises(FileExistsError):
        data._streaming_dataset(local="x")
    assert taken.calls == 1
