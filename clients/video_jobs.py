"""Which videos ``tddfa video`` renders and where each result goes.

``tddfa video IN OUT`` renders one video. ``tddfa video IN... --out-dir DIR`` renders
several, each to ``DIR/<name>_rendered.mp4``; ``--list FILE`` reads more from a file, one
video a line (``IN``, or ``IN<TAB>OUT``; blank lines and ``#`` comments skipped; relative
paths are taken from the list's folder). ``--json`` names the JSON Lines file of one video,
or with several the folder that gets ``<name>.jsonl`` for each.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tddfa_clients.video_io import VideoError, check_output_name
from tddfa_clients.video_streams import VideoJob

RENDERED_SUFFIX = "_rendered.mp4"


def read_list(path: Path) -> list[tuple[Path, Path | None]]:
    """(input, output or None) per line of a list file; VideoError names a bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VideoError(f"{path}: cannot read the video list ({exc.strerror or exc})") from exc
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) > 2:
            raise VideoError(
                f"{path}:{number}: expected `INPUT` or `INPUT<TAB>OUTPUT`, got {len(fields)} fields"
            )
        source = path.parent / fields[0].strip()
        output = path.parent / fields[1].strip() if len(fields) == 2 else None
        entries.append((source, output))
    return entries


def make_jobs(
    paths: Sequence[Path],
    out_dir: Path | None = None,
    list_file: Path | None = None,
    json_path: Path | None = None,
) -> list[VideoJob]:
    """The jobs of one command line; VideoError for a mistake, naming the fix."""
    entries: list[tuple[Path, Path | None]] = []
    if out_dir is None and list_file is None:
        if len(paths) != 2:
            raise VideoError(
                f"give one input and its output (`tddfa video IN OUT`), several inputs with "
                f"--out-dir DIR, or one input with --mesh ANIM.glb; got {len(paths)} path(s)"
            )
        entries.append((paths[0], paths[1]))
    else:
        entries += [(p, None) for p in paths]
        if list_file is not None:
            entries += read_list(list_file)
    if not entries:
        raise VideoError(f"{list_file}: the video list names no video")
    several = len(entries) > 1
    jobs = []
    for source, output in entries:
        if output is None:
            if out_dir is None:
                raise VideoError(
                    f"{source}: no output named: pass --out-dir DIR (or IN<TAB>OUT in the list)"
                )
            output = out_dir / f"{source.stem}{RENDERED_SUFFIX}"
        check_output_name(output)
        json_file = None
        if json_path is not None:
            json_file = json_path / f"{source.stem}.jsonl" if several else json_path
        jobs.append(VideoJob(source, output, json_file))
    outputs = [job.output for job in jobs]
    if len(set(outputs)) != len(outputs):
        raise VideoError(
            "two videos would be written to the same output (inputs with the same name?): "
            "name each output in a list file (IN<TAB>OUT)"
        )
    if several and json_path is not None and not json_path.is_dir():
        raise VideoError(f"--json {json_path}: with several videos, --json names a folder")
    return jobs
