"""``tddfa batch INPUTS... --out DIR``: many images and videos, resumable.

* Inputs: files, folders (searched recursively for images and videos) and globs.
* ``--jobs N`` files in flight; ``--url`` repeatable, and a name that resolves to several
  addresses (a Kubernetes headless Service) counts as all of them: frames are spread over
  every server, a server that stops answering is taken out of rotation (its frames go to
  another) and tried again later; names are resolved again every 30 s.
* ``DIR/manifest.jsonl`` (JSON Lines, append-only, the last record of an input wins):
  input, output, status (done | failed | skipped), error, frames, seconds. A rerun skips
  inputs whose output is recorded done and still exists, and retries the rest.
* Transient errors (server down, connection refused) are retried with exponential
  backoff; bad inputs (empty, truncated, not a video, 16-bit PNG, unreadable...) are
  recorded with a one-line reason and the batch carries on.
* Outputs are written under temporary names and renamed when complete; an existing
  output not made by this manifest is never replaced unless ``--overwrite``.
* ``--mesh [glb|obj|ply]``: every output gets a mesh file beside it, same name: a video's is
  its tracked faces animated (.glb, tddfa_clients.mesh_animation), an image's its faces
  (tddfa_clients.mesh); a file is done when both exist.
* Exit status 1 when any input failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import glob
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from tddfa.contract import STATELESS_ENSEMBLE, UV_MODE
from tddfa.files import is_temporary
from tddfa_clients.endpoints import Endpoints
from tddfa_clients.image import (
    IMAGE_SUFFIXES,
    ImageError,
    add_mesh_space_argument,
    add_render_argument,
    process_image,
    read_image,
    render_parameters,
)
from tddfa_clients.mesh_animation import open_animation
from tddfa_clients.mesh_model import FaceModelMismatch, MeshSources
from tddfa_clients.mesh_space import DEFAULT_SPACE
from tddfa_clients.replicas import ReplicaFrameClient
from tddfa_clients.triton_client import (
    DEFAULT_TIMEOUT,
    ClientError,
    InferenceError,
    ProtocolMismatch,
    ServerUnavailable,
    detect_protocol,
    normalize_url,
    protocol_hint,
)
from tddfa_clients.video import (
    VIDEO_SUFFIXES,
    add_mode_arguments,
    model_for,
    process_video,
    uv_refusal,
)
from tddfa_clients.video_io import VideoError, probe
from tddfa_tools.arguments import non_negative_int, positive_float, positive_int

LOG = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
DONE, FAILED, SKIPPED = "done", "failed", "skipped"


# -- inputs ---------------------------------------------------------------------------


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


# -- manifest -------------------------------------------------------------------------


class Manifest:
    """Append-only JSON Lines record of the batch; the last record per input wins."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self.records: dict[str, dict] = {}
        if path.exists():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    self.records[record["input"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    # a line cut short by a crash: ignore it, the input is redone
                    LOG.warning("%s:%d: ignoring a damaged record", path, number)

    def made(self, job: Job) -> bool:
        """The manifest recorded ``job``'s output done (it may since have been removed)."""
        record = self.records.get(str(job.source))
        return bool(
            record and record.get("status") == DONE and record.get("output") == str(job.output)
        )

    def is_done(self, job: Job) -> bool:
        return self.made(job) and job.output.exists() and (job.mesh is None or job.mesh.exists())

    def add(
        self, job: Job, status: str, error: str | None = None, frames: int = 0, seconds: float = 0.0
    ) -> dict:
        record = {
            "input": str(job.source),
            "output": str(job.output),
            "status": status,
            "error": error,
            "frames": frames,
            "seconds": round(seconds, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        line = json.dumps(record) + "\n"
        with self._lock:
            # one write per record: a crash loses at most this line, never earlier ones
            with open(self.path, "a") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self.records[record["input"]] = record
        return record


# -- one input ------------------------------------------------------------------------


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


def one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]


@dataclasses.dataclass
class Settings:
    protocol: str = "grpc"
    in_flight: int = 4
    retries: int = 5
    backoff: float = 0.5
    backoff_max: float = 10.0
    progress: bool = False
    mode: str = "track"  # videos: tracked sequences (tddfa_track) or independent frames
    smoothing: bool | None = None  # track mode: the sequences' smoothing (None: server default)
    timeout: float = DEFAULT_TIMEOUT
    render_mode: str | None = None  # --render MODE (None: the server's default)
    mesh_space: str = DEFAULT_SPACE  # --mesh files' frame (tddfa_clients.mesh_space)
    bfm: Path | None = None  # --mesh of videos: the server's BFM tables (None: the build cache)
    assets: Path | None = None  # --mesh: asset folder (triangles, texture coordinates)


def run_job(
    job: Job, servers: Endpoints, settings: Settings, meshes: MeshSources | None = None
) -> tuple[int, float]:
    """Process one input; returns (frames, seconds). Raises BadInput or ClientError.

    The frames of a video go to every live server of ``servers`` (a server that fails is
    taken out and its frames sent elsewhere); the whole file is retried with backoff only
    when no server answers at all."""
    check_input(job)
    if settings.render_mode == UV_MODE and not job.is_image:
        raise BadInput(uv_refusal(job.source))
    job.output.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        start = time.perf_counter()
        try:
            outputs = ("RENDERED", "FACE_COUNT")
            if job.mesh is not None:
                outputs += ("VERTICES",) if job.is_image else ("PARAMS", "LANDMARKS", "TRACK_IDS")
            model = STATELESS_ENSEMBLE if job.is_image else model_for(settings.mode)
            with ReplicaFrameClient(
                servers,
                settings.protocol,
                in_flight=settings.in_flight,
                outputs=outputs,
                model=model,
                timeout=settings.timeout,
                parameters=render_parameters(settings.render_mode),
            ) as client:
                if job.is_image:
                    tables = meshes.tables() if job.mesh is not None else None
                    process_image(
                        client, job.source, job.output, None, None, job.mesh, tables,
                        settings.mesh_space,
                    )  # fmt: skip
                    frames = 1
                else:
                    stats = process_video(
                        client,
                        job.source,
                        job.output,
                        progress=settings.progress,
                        description=job.source.name,
                        smoothing=settings.smoothing,
                        mesh=_animation(job, client, meshes, settings),
                    )
                    frames = stats.frames
            return frames, time.perf_counter() - start
        except (ImageError, VideoError, FaceModelMismatch) as exc:
            raise BadInput(str(exc)) from exc
        except InferenceError as exc:  # the server refused this input: not transient
            raise BadInput(f"server rejected it: {exc}") from exc
        except (ServerUnavailable, ConnectionError) as exc:
            attempt += 1
            if attempt > settings.retries:
                raise ServerUnavailable(f"gave up after {attempt} attempts: {exc}") from exc
            delay = min(settings.backoff * 2 ** (attempt - 1), settings.backoff_max)
            LOG.debug("%s: %s; retry %d in %.1f s", job.source.name, exc, attempt, delay)
            time.sleep(delay)


def _animation(job: Job, client, meshes: MeshSources | None, settings: Settings):
    """(mesh path, FaceAnimation) of a video job with --mesh, else None."""
    if job.mesh is None or meshes is None:
        return None
    animation = open_animation(client, probe(job.source), meshes.model(), settings.mesh_space)
    return job.mesh, animation


# -- the batch ------------------------------------------------------------------------


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete temporary outputs left by a killed run; returns how many."""
    count = 0
    for item in out_dir.rglob(".*.part*"):
        if item.is_file() and is_temporary(item):
            item.unlink(missing_ok=True)
            count += 1
    return count


def check_protocols(urls: list[str], protocol: str) -> None:
    """ProtocolMismatch (one line with the fix) when a server URL answers in the other
    protocol: every file would fail the same way, so the batch does not start. Servers that
    do not answer at all are left to the retry logic (they may come up later)."""
    for url in urls:
        hint = protocol_hint(url, protocol, detect_protocol(url))
        if hint is not None:
            raise ProtocolMismatch(hint)


def run_batch(
    inputs: list[str],
    out_dir: Path,
    urls: list[str],
    jobs: int = 2,
    overwrite: bool = False,
    settings: Settings | None = None,
    mesh_format: str | None = None,
) -> dict[str, int]:
    """Process everything; returns counts {done, skipped, failed, already_done, frames}."""
    settings = settings or Settings()
    addresses = [normalize_url(u, settings.protocol) for u in urls]
    check_protocols(addresses, settings.protocol)  # before anything is written
    servers = Endpoints(addresses)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out_dir)
    if stale:
        LOG.info("removed %d temporary file(s) left by an interrupted run", stale)
    manifest = Manifest(out_dir / MANIFEST)
    counts = {"done": 0, "already_done": 0, "skipped": 0, "failed": 0, "frames": 0}
    todo = []
    meshes = MeshSources(settings.bfm, settings.assets) if mesh_format is not None else None
    for job in plan_jobs(inputs, out_dir, mesh_format):
        if manifest.is_done(job):
            counts["already_done"] += 1
        elif job.output.exists() and not overwrite and not manifest.made(job):
            manifest.add(
                job,
                SKIPPED,
                "output exists and was not made by this batch; pass --overwrite to replace it",
            )
            counts["skipped"] += 1
        else:
            todo.append(job)
    bar = tqdm(total=len(todo), unit="file", desc="batch", disable=not todo)
    with bar, concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {pool.submit(run_job, job, servers, settings, meshes): job for job in todo}
        for future in concurrent.futures.as_completed(futures):
            job = futures[future]
            try:
                frames, seconds = future.result()
            except (BadInput, ClientError, OSError) as exc:
                manifest.add(job, FAILED, one_line(exc))
                counts["failed"] += 1
                LOG.debug("%s failed: %s", job.source, exc)
            else:
                manifest.add(job, DONE, None, frames, seconds)
                counts["done"] += 1
                counts["frames"] += frames
            bar.set_postfix(done=counts["done"], failed=counts["failed"])
            bar.update(1)
    return counts


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="render many images and videos (resumable)",
        description="Render images and videos (files, folders, globs) into DIR with several "
        "files in flight over one or more servers. DIR/manifest.jsonl records every "
        "input; rerunning the same command skips finished work and retries failures.",
    )
    parser.add_argument("inputs", nargs="+", help="files, folders or globs (quote globs)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--url",
        action="append",
        metavar="HOST[:PORT]",
        help="server; repeat for several, or give a name that resolves to several addresses "
        "(a Kubernetes headless Service): work is spread over all (default: localhost)",
    )
    parser.add_argument("--protocol", choices=("http", "grpc"), default="grpc")
    parser.add_argument(
        "--jobs", type=positive_int, default=2, metavar="N", help="files in flight (default 2)"
    )
    parser.add_argument(
        "--in-flight", type=positive_int, default=4, metavar="N", help="frames in flight per video"
    )
    parser.add_argument(
        "--retries",
        type=non_negative_int,
        default=5,
        help="retries per file when no server answers (default 5)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds any one server call may take (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs that exist but are not recorded done",
    )
    add_mode_arguments(parser)
    add_render_argument(parser)
    parser.add_argument(
        "--mesh",
        nargs="?",
        const="glb",
        choices=MESH_FORMATS,
        metavar="FORMAT",
        help="also write a mesh file beside each output: images' faces as glb (default), obj "
        "or ply; videos' tracked faces always as an animated glb",
    )
    add_mesh_space_argument(parser)
    parser.add_argument(
        "--bfm",
        type=Path,
        metavar="PATH",
        help="--mesh of videos: the server's BFM tables (its model repository or a bfm.npz; "
        "default: the ones `tddfa build` made)",
    )
    parser.add_argument(
        "--assets", type=Path, default=None, help="asset folder for --mesh's BFM tables"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.mesh is not None and args.mode != "track":
        raise ValueError("--mesh animates tracked faces: use --mode track (the default)")
    settings = Settings(
        protocol=args.protocol,
        in_flight=args.in_flight,
        retries=args.retries,
        progress=args.jobs == 1,
        mode=args.mode,
        smoothing=args.smoothing,
        timeout=args.timeout,
        render_mode=args.render,
        mesh_space=args.mesh_space,
        bfm=args.bfm,
        assets=args.assets,
    )
    counts = run_batch(
        args.inputs,
        args.out,
        args.url or ["localhost"],
        args.jobs,
        args.overwrite,
        settings,
        args.mesh,
    )
    LOG.info(
        "batch: %d done (%d frames), %d already done, %d skipped, %d failed; manifest %s",
        counts["done"],
        counts["frames"],
        counts["already_done"],
        counts["skipped"],
        counts["failed"],
        args.out / MANIFEST,
    )
    if counts["failed"]:
        manifest = Manifest(args.out / MANIFEST)
        for record in manifest.records.values():
            if record["status"] == FAILED:
                LOG.error("failed: %s: %s", record["input"], record["error"])
    return 1 if counts["failed"] else 0
