"""Small file helpers: outputs appear whole or not at all; images open upright and RGB."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps

from vlm.faults import crash_point


def open_rgb(source: str | Path | IO[bytes]) -> Image.Image:
    """An image file (path or bytes stream) decoded in memory as RGB, its EXIF orientation applied
    (camera photos are often stored sideways with a tag saying so). Grey, RGBA and palette images
    become RGB as open_clip's transform would convert them."""
    with Image.open(source) as image:
        upright = ImageOps.exif_transpose(image)
        if upright.mode == "P" and "transparency" in upright.info:
            upright = upright.convert("RGBA")  # what PIL asks for before dropping a palette's alpha
        return upright.convert("RGB")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `path`; on success it replaces `path`, on error it is removed.

    A crash mid-stage therefore never leaves a half-written output, and the previous output stays
    intact until the new one is complete.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    crash_point(f"write:{path.as_posix()}")
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, obj, sort_keys: bool = True) -> None:
    """Write JSON (sorted keys unless told, trailing newline) via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path):
    with Path(path).open() as f:
        return json.load(f)


def files_digest(root: str | Path, pattern: str) -> str:
    """sha256 (hex) of the files under `root` matching `pattern`: their relative names and contents,
    in sorted order. The same files anywhere give the same digest."""
    h = hashlib.sha256()
    root = Path(root)
    for path in sorted(root.glob(pattern)):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()
