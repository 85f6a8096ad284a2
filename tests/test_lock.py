"""requirements.lock against pyproject.toml and against what is installed: `make` and the image install
from the lock (hash-checked), so a dependency added to pyproject.toml without `make lock` must fail
here, not on a user's machine a month later."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def locked() -> list[tuple[Requirement, list[str]]]:
    """Each pin of the lock (`name==version ; marker`) with its hashes."""
    entries, current = [], None
    for line in LOCK.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not line[0].isspace():
            current = (Requirement(text.rstrip(" \\")), [])
            entries.append(current)
        elif text.startswith("--hash="):
            current[1].append(text.removeprefix("--hash=").rstrip(" \\"))
    return entries


def pins_here() -> dict[str, Version]:
    """The lock's version of each package for this interpreter (markers evaluated)."""
    pins = {}
    for req, _ in locked():
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.lock: {req} is not an exact pin"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_pin_carries_hashes():
    entries = locked()
    assert len(entries) > 100  # the whole tree, not only the direct dependencies
    for req, hashes in entries:
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), req


def test_the_lock_satisfies_every_dependency_of_pyproject():
    pins = pins_here()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} of pyproject.toml is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"pyproject.toml asks for {req}, requirements.lock pins {pins[name]}: run `make lock`")


def test_the_lock_is_made_by_make_lock_from_pyproject():
    header = LOCK.read_text().splitlines()[1]
    makefile = (ROOT / "Makefile").read_text()
    command = re.search(r"\$\(BIN\)/uv (pip compile .*) -o \$\(LOCK\)", makefile).group(1).replace(" --quiet", "")
    assert command in header, (header, command)


def test_this_environment_is_the_locked_one():
    """`make install` (and the image) installed exactly the lock's versions."""
    pins = pins_here()
    wrong = {}
    for req in declared():
        name = canonicalize_name(req.name)
        installed = Version(importlib.metadata.version(name))
        if installed != pins[name]:
            wrong[name] = (str(installed), str(pins[name]))
    assert not wrong, f"installed vs locked: {wrong}; run `make install`"
