"""Atomic file output: the one helper every writer of the project uses.

A file appears under its final name complete or not at all: it is written under a hidden
temporary name in the same folder (same filesystem, so the final ``os.replace`` is atomic)
and renamed on success; on any exception, Ctrl-C included, the temporary file is removed.

Files get the mode a plain ``open(path, "w")`` would give (0666 minus the umask: 0644 under
the usual umask 022), not ``tempfile.mkstemp``'s 0600: models, configs and outputs are read
by servers and users other than the writer.

Several outputs of one command (an image and its JSON) are staged together with
:func:`atomic_paths`: every temporary file is created before any work is done (a missing
or read-only folder fails first, with nothing written), and none is renamed unless all of
them were written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

TEMPORARY_MARK = ".part"
FILE_MODE = 0o666  # before the umask, like open(); 0644 under umask 022


def temporary_name(path: Path) -> Path:
    """Hidden name beside ``path`` that keeps its suffix (``.out.1a2b3c4d.part.mp4``) so
    writers that pick a format from the suffix (PyAV, Pillow, numpy) still work."""
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}{TEMPORARY_MARK}{path.suffix}")


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """True for names made by :func:`temporary_name` (left behind by a killed process)."""
    name = Path(path).name
    return name.startswith(".") and TEMPORARY_MARK in name


def _create(path: Path) -> Path:
    """Create the temporary file of ``path`` exclusively (umask-respecting mode)."""
    for _ in range(8):
        temp = temporary_name(path)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:  # 32 random bits collided: draw again
            continue
        os.close(fd)
        return temp
    raise FileExistsError(f"cannot create a temporary file beside {path}")


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Yield one temporary path per target; rename them all to the targets on success.

    The temporary files exist (empty) when the block starts, so a missing folder or a
    permission problem raises here, before any work. On an exception inside the block
    every temporary file is removed and no target is touched.
    """
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            temps.append(_create(target))
        yield list(temps)
        for temp, target in zip(temps, targets, strict=True):
            os.replace(temp, target)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """:func:`atomic_paths` for one file: yield its temporary path, rename on success."""
    with atomic_paths([path]) as (temp,):
        yield temp


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)
