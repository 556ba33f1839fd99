"""Checks on the files a client is asked to write, before any work starts: an output that is
the input (it would be overwritten), an output folder that does not exist (named, not hidden
behind a staging file's name), an output that is a folder, two outputs on one file."""

from __future__ import annotations

import os
from pathlib import Path


class OutputError(ValueError):
    """An output path cannot be written as asked; the message says what to do."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(source: Path, *outputs: Path | None) -> None:
    """OutputError for the first output (None: not asked for) that cannot be written."""
    given = [Path(p) for p in outputs if p is not None]
    for index, output in enumerate(given):
        if output.absolute() == Path(source).absolute() or _same_file(output, Path(source)):
            raise OutputError(
                f"{output} is the input file: writing it would destroy the input; choose "
                "another output name"
            )
        if output in given[:index]:
            raise OutputError(f"{output} is given for two outputs: choose different names")
        if output.is_dir():
            raise OutputError(f"{output} is a folder: give a file name inside it")
        folder = output.absolute().parent
        if not folder.is_dir():
            raise OutputError(
                f"the output folder {folder} does not exist: create it (mkdir -p {folder}) "
                "or choose another output path"
            )
        if not os.access(folder, os.W_OK):
            raise OutputError(f"the output folder {folder} is not writable: choose another")
