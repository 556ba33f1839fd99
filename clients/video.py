"""``tddfa video IN OUT`` (or ``IN... --out-dir DIR``): render every frame of videos through
the server.

Decode (NVDEC or the CPU) -> the ensemble, several frames in flight -> encode (NVENC or
libx264) with the input's timestamps, audio copied. Frames are sent in display orientation
(the input's rotation metadata applied) at their exact size, so the output plays upright
and odd sizes come back unchanged. The output and the ``--json`` JSON Lines file are
staged together under temporary names and renamed only when both are complete, so an
error or Ctrl-C leaves no file at all. ``--mesh anim.glb`` adds an animated glTF of every
tracked face (tddfa_clients.mesh_animation) to one video's outputs; without an output video
the frames are neither rendered nor encoded.

Over gRPC to one server every video runs at once in this process, decoding, inference and
encoding overlapping (tddfa_clients.video_streams); over HTTP, or to several replicas behind
one name, the videos go one after another (tddfa_clients.video_client, with failover).
Transport: with NVDEC and a local server whose models run on the GPU, frames never visit
the host: each decoded frame is copied device to device into CUDA shared memory, the
ensemble reads it there, RENDERED comes back through CUDA shared memory and goes to NVENC
on the device (or, on GPUs without NVENC, to the host and libx264, said once). Otherwise
frames go through system shared memory (local server) or the request body.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from tqdm import tqdm

from tddfa.contract import DEFAULT_OUTPUTS, UV_MODE
from tddfa_clients.image import (
    IMAGE_SUFFIXES,
    add_mesh_space_argument,
    add_render_argument,
    add_server_arguments,
    render_parameters,
)
from tddfa_clients.mesh_animation import check_animation_name, open_animation
from tddfa_clients.mesh_model import load_face_model
from tddfa_clients.output_paths import check_outputs
from tddfa_clients.shm_slots import SHARED_MEMORY, CudaSharedMemoryRefused
from tddfa_clients.triton_client import ClientError
from tddfa_clients.video_client import (  # noqa: F401  (re-exported: tddfa batch, benchmarks)
    MODES,
    choose_transport,
    device_frames,
    frames_for,
    host_frames,
    model_for,
    open_client,
    process_video,
    streams_possible,
    transport_of,
)
from tddfa_clients.video_io import (  # noqa: F401  (VideoStats, check_output_name re-exported)
    DECODERS,
    ENCODERS,
    X264_PRESETS,
    EncoderSettings,
    VideoError,
    VideoStats,
    check_output_name,
    probe,
    require_codecs,
)
from tddfa_clients.video_jobs import make_jobs
from tddfa_clients.video_streams import StreamOptions, VideoJob, run_videos
from tddfa_tools.arguments import positive_int

LOG = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "video",
        help="render videos through the server",
        description="Decode videos, send every frame to the tddfa ensemble with several "
        "frames in flight, and encode the rendered frames with the input's frame rate, "
        "timestamps and audio. Several videos run at once in this one process (gRPC): "
        "decoding, inference and encoding overlap.",
    )
    parser.add_argument(
        "paths",
        type=Path,
        nargs="*",
        metavar="PATH",
        help="IN OUT: one video and its rendered output (.mp4, .mov or .mkv; may be left out "
        "with --mesh); with --out-dir: any number of inputs",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        metavar="DIR",
        help="render every input to DIR/<name>_rendered.mp4 (default: none, IN OUT given)",
    )
    parser.add_argument(
        "--list",
        type=Path,
        dest="list_file",
        metavar="FILE",
        help="more inputs, one a line: IN, or IN<TAB>OUT (relative to the list's folder; "
        "default: none)",
    )
    add_server_arguments(parser)
    parser.add_argument(
        "--json",
        type=Path,
        help="per-frame results as JSON Lines (with several videos: a folder, <name>.jsonl "
        "each; default: not written)",
    )
    parser.add_argument(
        "--mesh",
        type=Path,
        metavar="ANIM.glb",
        help="also write every tracked face as one animated glTF binary (a mesh per track, "
        "expression morph targets, pose keyframes at the frames' timestamps); one video "
        "(default: not written)",
    )
    add_mesh_space_argument(parser)
    parser.add_argument(
        "--bfm",
        type=Path,
        metavar="PATH",
        help="--mesh: the server's BFM tables (its model repository or a bfm.npz; default: "
        "the ones `tddfa build` made, built from the assets if missing)",
    )
    parser.add_argument(
        "--assets",
        type=Path,
        default=None,
        help="asset folder for --mesh's BFM tables (default: $TDDFA_ASSET_DIR, then the cache)",
    )
    parser.add_argument(
        "--in-flight",
        type=positive_int,
        default=StreamOptions.in_flight,
        metavar="N",
        help="frames of each video in flight (default %(default)s)",
    )
    parser.add_argument(
        "--shared-memory",
        choices=SHARED_MEMORY,
        default="auto",
        help="how frames reach a local server: cuda (NVDEC frames copied device to device "
        "into CUDA shared memory, RENDERED back the same way), system, none (request body); "
        "auto (default): cuda when the decoder is NVDEC, the server local and its models on "
        "the GPU, else system when local, else none",
    )
    parser.add_argument("--no-shm", action="store_true", help="same as --shared-memory none")
    parser.add_argument(
        "--gpu",
        type=int,
        default=0,
        metavar="N",
        help="GPU of NVDEC, NVENC and the CUDA shared memory (default 0; numbered as this "
        "process sees it: for a server started with --gpus N, run with CUDA_VISIBLE_DEVICES=N)",
    )
    parser.add_argument("--decoder", choices=DECODERS, default="auto", help="default: auto")
    parser.add_argument("--encoder", choices=ENCODERS, default="auto", help="default: auto")
    defaults = EncoderSettings()
    parser.add_argument(
        "--crf",
        type=int,
        choices=range(52),
        default=defaults.crf,
        metavar="0-51",
        help=f"libx264 quality: lower is better and larger (default {defaults.crf})",
    )
    parser.add_argument(
        "--preset",
        choices=X264_PRESETS,
        default=defaults.preset,
        help=f"libx264 speed: faster presets cost less CPU for larger files (default "
        f"{defaults.preset})",
    )
    add_mode_arguments(parser)
    add_render_argument(parser)
    parser.set_defaults(func=run)


def outputs_for(
    mode: str, json_wanted: bool, rendered: bool = True, mesh: bool = False
) -> tuple[str, ...]:
    """What a video asks for: the rendered frame (unless not ``rendered``), plus the JSON
    fields when wanted, plus what an animated mesh needs."""
    names = ["RENDERED", "FACE_COUNT"] if rendered else ["FACE_COUNT"]
    if json_wanted:
        names += DEFAULT_OUTPUTS + (("TRACK_IDS", "DETECTED") if mode == "track" else ())
    if mesh:
        names += ("PARAMS", "LANDMARKS", "TRACK_IDS")
    return tuple(n for i, n in enumerate(names) if n not in names[:i])


def add_mode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="track",
        help="track (default): the video is one sequence; faces are tracked from frame to "
        "frame (detector only when needed), keep a track_id and are smoothed. detect: every "
        "frame is detected anew, as a still image",
    )
    parser.add_argument(
        "--no-smoothing",
        dest="smoothing",
        action="store_const",
        const=False,
        default=None,
        help="--mode track without temporal smoothing (default: the server's smoothing)",
    )


def refuse_images(source: Path) -> None:
    """VideoError for a still image given as a video (it would become a one-frame video)."""
    if Path(source).suffix.lower() in IMAGE_SUFFIXES:
        raise VideoError(
            f"{source} is an image, not a video: render it with `tddfa image {source} OUT.jpg`"
        )


def uv_refusal(source: Path) -> str:
    """Why a video cannot be rendered in the uv mode, and what to do instead."""
    return (
        f"{source}: render mode {UV_MODE} returns each face's UV map, not the frame: use "
        "`tddfa image --render uv` on single frames"
    )


def run(args: argparse.Namespace) -> int:
    """Errors (VideoError, ClientError, OSError) reach the CLI's one-line error boundary; with
    several videos, each failure is one error line and the exit status is 1."""
    if args.mesh is not None:
        return _run_with_mesh(args)
    jobs = make_jobs(args.paths, args.out_dir, args.list_file, args.json)
    if args.render == UV_MODE:
        raise VideoError(uv_refusal(jobs[0].source))
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    for job in jobs:  # bad inputs, outputs and codecs fail before the server is asked
        check_outputs(job.source, job.output, job.json_path)
        refuse_images(job.source)
        probe(job.source)
    require_codecs(args.decoder, args.encoder)
    outputs = outputs_for(args.mode, args.json is not None)
    settings = EncoderSettings(args.crf, args.preset)
    if streams_possible(args.url, args.protocol):
        results = _run_streams(args, jobs, outputs, settings)
    else:  # HTTP, or several replicas behind one name: one video at a time
        results = []
        with open_client(args, outputs) as client:
            for job in jobs:
                results.append(_run_one(client, args, job, settings))
    failed = 0
    for job, result in zip(jobs, results, strict=True):
        if isinstance(result, BaseException):
            if len(jobs) == 1:
                raise result
            LOG.error("%s: %s", job.source, result)
            failed += 1
            continue
        LOG.info(
            "%s: %d frames in %.1f s (%.1f frames/s; %s -> %s shared memory -> %s) -> %s",
            job.source, result.frames, result.seconds, result.fps, result.decoder,
            result.transport, result.encoder, job.output,
        )  # fmt: skip
    return 1 if failed else 0


def _run_streams(args, jobs, outputs, settings) -> list[VideoStats | BaseException]:
    shared_memory = "none" if args.no_shm else args.shared_memory
    shared_memory = choose_transport(
        shared_memory, args.decoder, args.url, args.protocol, model_for(args.mode)
    )
    options = StreamOptions(
        model=model_for(args.mode),
        outputs=outputs,
        in_flight=max(args.in_flight, 2),
        shared_memory=shared_memory,
        timeout=args.timeout,
        gpu=args.gpu,
        parameters=render_parameters(args.render),
        decoder=args.decoder,
        encoder=args.encoder,
        encoder_settings=settings,
        smoothing=args.smoothing,
    )
    total = sum(probe(job.source).frame_count for job in jobs)
    with tqdm(total=total or None, unit="frame", desc="tddfa video", leave=False) as bar:
        results = run_videos(args.url, jobs, options, progress=bar)
        refused = [i for i, r in enumerate(results) if isinstance(r, CudaSharedMemoryRefused)]
        if refused and args.shared_memory == "auto" and not args.no_shm:
            # CUDA shared memory chosen automatically and refused: the host transport
            LOG.warning(
                "CUDA shared memory refused (%s): frames go through the host", results[refused[0]]
            )
            options = dataclasses.replace(options, shared_memory="auto")
            again = run_videos(args.url, [jobs[i] for i in refused], options, progress=bar)
            for i, result in zip(refused, again, strict=True):
                results[i] = result
    return results


def _run_one(client, args, job: VideoJob, settings) -> VideoStats | BaseException:
    try:
        return process_video(
            client, job.source, job.output, job.json_path, args.decoder, args.encoder,
            gpu_id=args.gpu, smoothing=args.smoothing, settings=settings,
        )  # fmt: skip
    except (VideoError, ClientError, OSError) as exc:
        return exc


def _run_with_mesh(args: argparse.Namespace) -> int:
    """``--mesh``: one video, with or without an output video, through a FrameClient (the
    animation records every frame's parameters as they come back)."""
    if args.out_dir is not None or args.list_file is not None or len(args.paths) not in (1, 2):
        raise VideoError("--mesh writes one animation: give one input (and its output video)")
    source = args.paths[0]
    output = args.paths[1] if len(args.paths) == 2 else None
    if args.render == UV_MODE:
        raise VideoError(uv_refusal(source))
    check_outputs(source, output, args.json, args.mesh)
    refuse_images(source)
    if output is not None:  # bad names, inputs, codecs fail before the server is asked
        check_output_name(output)
    require_codecs(args.decoder, args.encoder if output is not None else "auto")
    check_animation_name(args.mesh, args.mode)
    info = probe(source)
    outputs = outputs_for(args.mode, args.json is not None, output is not None, True)
    model = load_face_model(args.bfm, args.assets)
    with open_client(args, outputs) as client:
        mesh = (args.mesh, open_animation(client, info, model, args.mesh_space))
        stats = process_video(
            client, source, output, args.json, args.decoder, args.encoder, gpu_id=args.gpu,
            smoothing=args.smoothing, mesh=mesh, settings=EncoderSettings(args.crf, args.preset),
        )  # fmt: skip
    LOG.info(
        "%s: %d frames in %.1f s (%.1f frames/s; %s -> %s shared memory -> %s) -> %s",
        source, stats.frames, stats.seconds, stats.fps, stats.decoder, stats.transport,
        stats.encoder, ", ".join(str(p) for p in (output, args.mesh) if p is not None),
    )  # fmt: skip
    return 0
