"""Crash recovery for the training stages, with Composer's autoresume.

A stage's resume checkpoints live in `checkpoints/<stage>/<fingerprint>/`, outside the DVC outputs
(or under `resume.folder`: another folder, or with an s3:// URI a copy on S3, vlm/training/mirror.py).
The fingerprint hashes the params the stage reads and the contents of every dependency it has
(code and data), so a checkpoint made with other params, code or inputs is never picked up: a
changed run simply gets another folder. The folder is removed once the stage's outputs are written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

ROOT = Path("checkpoints")


@dataclass(frozen=True)
class Resume:
    folder: Path  # where Composer saves and autoresume looks
    run_name: str  # the Composer run name, `<stage>-<fingerprint>`
    interval: int  # batches between checkpoints; 0 = no checkpoints, nothing to resume from
    remote: str | None = None  # s3://.../<stage>/<fingerprint>: the copy of `folder` any machine can pull

    @classmethod
    def of(cls, stage: str, fingerprint: str, interval: int, root: str | Path = ROOT) -> Resume:
        """`root`: `resume.folder`, a folder (this repository's checkpoints/ unless told otherwise) or
        an s3:// URI, whose local copy is then this repository's checkpoints/."""
        run_name = f"{stage}-{fingerprint}"
        if str(root).startswith("s3://"):
            return cls(ROOT / stage / fingerprint, run_name, interval, f"{str(root).rstrip('/')}/{stage}/{fingerprint}")
        return cls(Path(root) / stage / fingerprint, run_name, interval)

    def done(self) -> None:
        """The stage's outputs are complete: its resume checkpoints are no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.folder.parent.is_dir() and not any(self.folder.parent.iterdir()):
            self.folder.parent.rmdir()
        if self.remote is not None:
            from vlm.training.mirror import RemoteMirror  # boto3 only where S3 is used

            RemoteMirror(self.folder, self.remote).clear()


def _hash_file(h: Any, path: Path) -> None:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def fingerprint(params: dict, paths: list[Path]) -> str:
    """A short hash of `params` (plain data) and the contents of `paths` (files or folders)."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for root in sorted(paths):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            h.update(f"\0{f.as_posix()}\0".encode())
            if f.exists():
                _hash_file(h, f)
    return h.hexdigest()[:16]


def checkpoint_bytes(model: nn.Module) -> int:
    """A checkpoint's size: every weight, plus AdamW's two moments of each trainable one, in fp32."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = sum(2 * p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return weights + moments


def check_disk_space(folder: Path, needed: int, what: str) -> None:
    """Fail before training when `folder`'s file system cannot hold `needed` bytes (with 10 % slack)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed * 1.1:
        raise OSError(
            f"{folder}: not enough disk space for {what}: need about {needed / 2**20:,.1f} MiB, "
            f"{free / 2**20:,.1f} MiB free; free some space (old runs under `resume.folder` can go) or lower "
            "`resume.checkpoint_interval` to 0 to train without resume checkpoints"
        )
