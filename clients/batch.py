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
import logging
import time
from pathlib import Path

import tenacity
from tqdm import tqdm

from tddfa.contract import UV_MODE
from tddfa.files import is_temporary
from tddfa_clients.batch_jobs import MESH_FORMATS, BadInput, Job, check_input, plan_jobs
from tddfa_clients.batch_manifest import DONE, FAILED, MANIFEST, SKIPPED, Manifest
from tddfa_clients.endpoints import Endpoints
from tddfa_clients.image import (
    ImageError,
    add_mesh_space_argument,
    add_render_argument,
    process_image,
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
    add_mode_arguments,
    model_for,
    outputs_for,
    process_video,
    uv_refusal,
)
from tddfa_clients.video_io import VideoError, probe
from tddfa_tools.arguments import non_negative_int, positive_float, positive_int

LOG = logging.getLogger(__name__)


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
    json: bool = False  # --json: each input's results beside its output


def json_path_for(job: Job) -> Path:
    """Where ``--json`` writes a job's results: ``.json`` beside an image's output, ``.jsonl``
    (JSON Lines, one frame a line) beside a video's."""
    return job.output.with_suffix(".json" if job.is_image else ".jsonl")


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
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((ServerUnavailable, ConnectionError)),
        stop=tenacity.stop_after_attempt(settings.retries + 1),
        wait=tenacity.wait_exponential(multiplier=settings.backoff, max=settings.backoff_max),
        before_sleep=lambda state: LOG.debug(
            "%s: %s; retry %d in %.1f s",
            job.source.name,
            state.outcome.exception(),
            state.attempt_number,
            state.next_action.sleep,
        ),
        reraise=True,
    )
    try:
        return retrying(_run_once, job, servers, settings, meshes)
    except (ServerUnavailable, ConnectionError) as exc:
        raise ServerUnavailable(f"gave up after {settings.retries + 1} attempts: {exc}") from exc


def _run_once(
    job: Job, servers: Endpoints, settings: Settings, meshes: MeshSources | None
) -> tuple[int, float]:
    """One attempt at ``job``: (frames, seconds)."""
    start = time.perf_counter()
    try:
        mode = "detect" if job.is_image else settings.mode
        outputs = outputs_for(mode, settings.json, mesh=job.mesh is not None and not job.is_image)
        if job.mesh is not None and job.is_image:
            outputs += ("VERTICES",)
        model = model_for(mode)
        json_path = json_path_for(job) if settings.json else None
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
                    client, job.source, job.output, json_path, None, job.mesh, tables,
                    settings.mesh_space,
                )  # fmt: skip
                frames = 1
            else:
                stats = process_video(
                    client,
                    job.source,
                    job.output,
                    json_path,
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
        if job.output.absolute() == job.source.absolute():
            manifest.add(job, FAILED, "the output would replace the input: choose another --out")
            counts["failed"] += 1
        elif manifest.is_done(job):
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
    parser.add_argument(
        "--protocol", choices=("http", "grpc"), default="grpc", help="transport (default: grpc)"
    )
    parser.add_argument(
        "--jobs", type=positive_int, default=2, metavar="N", help="files in flight (default 2)"
    )
    parser.add_argument(
        "--in-flight",
        type=positive_int,
        default=4,
        metavar="N",
        help="frames in flight per video (default 4)",
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
    parser.add_argument(
        "--json",
        action="store_true",
        help="also write each input's results beside its output: NAME.json for an image "
        "(as tddfa image --json), NAME.jsonl for a video (as tddfa video --json)",
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
        "--assets",
        type=Path,
        default=None,
        help="asset folder for --mesh's BFM tables (default: $TDDFA_ASSET_DIR, then the cache)",
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
        json=args.json,
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
