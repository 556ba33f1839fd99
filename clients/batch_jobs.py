"""The inputs of ``tddfa batch``: files, folders and globs to jobs with unique outputs (and
mesh files beside them), and the checks that refuse a bad input before any server is used."""

from __future__ import annotations

import dataclasses
import glob
from collections.abc import Iterable
from pathlib import Path

from tddfa.files import is_temporary
from tddfa_clients.image import IMAGE_SUFFIXES, ImageError, read_image
from tddfa_clients.video import VIDEO_SUFFIXES
from tddfa_clients.video_io import VideoError, probe

MESH_FORMATS = ("glb", "obj", "ply")


@dataclasses.dataclass(frozen=True)
class Job:
    source: Path  # absolute
    output: Path  # absolute, inside the output folder
    mesh: Path | None = None  # --mesh: beside the output

    @property
    def is_image(self) -> bool:
        return self.source.suffix.lower() in IMAGE_SUFFIXES


def mesh_beside(output: Path, mesh_format: str | None) -> Path | None:
    """The mesh file of ``output`` (same name): a video's is always an animated .glb."""
    if mesh_format is None:
        return None
    is_image = output.suffix.lower() in IMAGE_SUFFIXES
    return output.with_suffix(f".{mesh_format}" if is_image else ".glb")


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES and not is_temporary(path)


def discover(inputs: Iterable[str]) -> list[tuple[Path, Path]]:
    """(source, name relative to the output folder) for every input, in a stable order.

    A folder contributes its images and videos (recursively, relative names kept); a glob
    its matches; an explicit file is taken whatever it is (a bad one is reported later).
    """
    found: dict[Path, Path] = {}
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            for item in sorted(path.rglob("*")):
                if (item.is_file() or item.is_symlink()) and _is_media(item):
                    found.setdefault(item.absolute(), item.relative_to(path))
        elif glob.has_magic(text):
            for match in sorted(glob.glob(text, recursive=True)):
                item = Path(match)
                if item.is_file() and _is_media(item):
                    found.setdefault(item.resolve(), Path(item.name))
        else:  # a file, or a path that does not exist / cannot be read (reported per file)
            found.setdefault(path.absolute(), Path(path.name))
    return list(found.items())


def plan_jobs(inputs: Iterable[str], out_dir: Path, mesh_format: str | None = None) -> list[Job]:
    """Jobs with unique output (and mesh) paths: images keep their format, videos become
    .mp4."""
    jobs, taken = [], set()
    for source, relative in discover(inputs):
        suffix = relative.suffix.lower()
        if suffix not in (".png", ".jpg", ".jpeg"):  # writable image formats keep theirs
            suffix = ".png" if suffix in IMAGE_SUFFIXES else ".mp4"
        output = (out_dir / relative).with_suffix(suffix).absolute()
        stem, n = output.stem, 1
        while output in taken or mesh_beside(output, mesh_format) in taken:
            output = output.with_name(f"{stem}_{n}{suffix}")
            n += 1
        mesh = mesh_beside(output, mesh_format)
        taken.update(p for p in (output, mesh) if p is not None)
        jobs.append(Job(source, output, mesh))
    return jobs


class BadInput(Exception):
    """The input itself is the problem; retrying cannot help."""


def check_input(job: Job) -> None:
    """Reject unreadable, empty and undecodable inputs before using a server."""
    try:
        size = job.source.stat().st_size
        with open(job.source, "rb"):
            pass
    except OSError as exc:
        raise BadInput(f"cannot read: {exc.strerror or exc}") from exc
    if not job.source.is_file():
        raise BadInput("not a regular file")
    if size == 0:
        raise BadInput("empty file (0 bytes)")
    try:
        if job.is_image:
            read_image(job.source)
        else:
            probe(job.source)
    except (ImageError, VideoError) as exc:
        raise BadInput(str(exc).replace(f"{job.source}: ", "")) from exc
