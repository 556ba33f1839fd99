"""``tddfa video IN OUT``: render every frame of a video through the server.

Decode (NVDEC or the CPU) -> the ensemble, several frames in flight -> encode (NVENC or
libx264) with the input's timestamps, audio copied. Frames are sent in display orientation
(the input's rotation metadata applied) at their exact size, so the output plays upright
and odd sizes come back unchanged. The output and the ``--json`` JSON Lines file are
staged together under temporary names and renamed only when both are complete, so an
error or Ctrl-C leaves no file at all. ``--mesh anim.glb`` adds an animated glTF of every
tracked face (tddfa_clients.mesh_animation) to those outputs; without an output video the
frames are neither rendered nor encoded.

Transport: with NVDEC and a local server whose models run on the GPU, frames never visit
the host: each decoded frame is copied device to device into its CUDA shared memory slot
(before the decoder is asked for the next one: it reuses its surfaces), the ensemble reads
it there, RENDERED comes back through CUDA shared memory and goes to NVENC on the device
(or, on GPUs without NVENC, to the host and libx264, said once). Otherwise frames go
through system shared memory (local server) or the request body.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from tddfa.contract import DEFAULT_OUTPUTS, SEQUENCE_ENSEMBLE, STATELESS_ENSEMBLE, UV_MODE
from tddfa.files import atomic_paths
from tddfa_clients.image import (
    IMAGE_SUFFIXES,
    add_mesh_space_argument,
    add_render_argument,
    add_server_arguments,
    faces_json,
    render_parameters,
)
from tddfa_clients.mesh_animation import FaceAnimation, check_animation_name, open_animation
from tddfa_clients.mesh_model import load_face_model
from tddfa_clients.output_paths import check_outputs
from tddfa_clients.replicas import open_frame_client
from tddfa_clients.shared_memory import cuda_shm
from tddfa_clients.triton_client import (
    SHARED_MEMORY,
    ClientError,
    FrameClient,
    is_local,
    new_sequence_id,
    normalize_url,
    served_on_gpu,
)
from tddfa_clients.video_io import (
    DECODERS,
    ENCODERS,
    OUTPUT_SUFFIXES,
    Decoder,
    VideoError,
    nvidia_codec_available,
    open_decoder,
    open_encoder,
    probe,
    require_codecs,
)
from tddfa_tools.arguments import positive_int

LOG = logging.getLogger(__name__)
MODES = ("track", "detect")

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")


@dataclasses.dataclass(frozen=True)
class VideoStats:
    frames: int
    seconds: float
    decoder: str
    encoder: str
    transport: str = "none"  # shared memory: cuda, system or none

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def host_frames(decoder: Decoder) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """((index, pts), host RGB image) for each frame: the host transport path (an NVDEC
    frame is copied to the host here, before the decoder reuses its surface)."""
    for frame in decoder:
        yield (frame.index, frame.pts), frame.host_image()


def device_frames(decoder: Decoder) -> Iterator[tuple[tuple[int, int], Any]]:
    """((index, pts), image) with NVDEC frames left on the GPU: CuPy views of surfaces
    the decoder reuses, valid until the next frame is pulled. Only for a FrameClient in
    CUDA shared memory mode, whose ``infer_stream`` copies each frame into its slot before
    pulling the next."""
    for frame in decoder:
        yield (frame.index, frame.pts), frame.image


def frames_for(client: FrameClient, decoder: Decoder) -> Iterator[tuple[tuple[int, int], Any]]:
    """Device frames when both the decoder and the client's transport are on the GPU,
    else host frames."""
    if decoder.on_device and transport_of(client) == "cuda":
        return device_frames(decoder)
    return host_frames(decoder)


def transport_of(client: Any) -> str:
    """``cuda``, ``system`` or ``none``; a client over several replicas is always "none"
    (shared memory needs one local server)."""
    return getattr(client, "shared_memory_kind", "none")


def process_video(
    client: FrameClient,
    source: Path,
    output: Path | None,
    json_path: Path | None = None,
    decoder: str = "auto",
    encoder: str = "auto",
    progress: bool = True,
    description: str | None = None,
    gpu_id: int = 0,
    smoothing: bool | None = None,
    mesh: tuple[Path, FaceAnimation] | None = None,
) -> VideoStats:
    """Render ``source`` into ``output`` (and ``json_path``, and ``mesh``: the animated
    glTF's path and its recorder); raises VideoError/ClientError. ``output`` None: nothing
    is encoded (the client need not ask for RENDERED). Nothing is written unless every
    output is complete.

    ``gpu_id``: the GPU of NVDEC and NVENC (with a CUDA shared memory client: its
    ``cuda_device``, so frames are copied within one GPU). A client of the sequence
    ensemble (:func:`model_for` ``("track")``) sends the video as one Triton sequence, with
    ``smoothing`` as the sequence's choice (None: the server's default); a client of
    ``tddfa`` sends independent frames.
    """
    if output is not None:
        check_output_name(output)
    info = probe(source)
    if transport_of(client) == "cuda":
        gpu_id = client.cuda_device
    audio = source if info.has_audio else None
    start = time.perf_counter()
    animation = mesh[1] if mesh is not None else None
    targets = [output, json_path, mesh[0] if mesh is not None else None]
    with atomic_paths([p for p in targets if p is not None]) as staged:
        temps = iter(staged)
        temp_video, temp_json, temp_mesh = (next(temps) if p is not None else None for p in targets)
        with (
            _json_lines(temp_json) as lines,
            open_decoder(source, decoder, gpu_id=gpu_id) as dec,
            _encoder(temp_video, info, encoder, audio, gpu_id) as enc,
        ):
            LOG.debug(
                "decoder: %s, transport: %s shared memory, encoder: %s",
                dec.name,
                transport_of(client),
                enc.name if enc is not None else "none",
            )
            bar = tqdm(
                total=info.frame_count or None,
                unit="frame",
                desc=description or source.name,
                disable=not progress,
                leave=False,
            )
            with bar:
                sequence = {}
                if client.model == SEQUENCE_ENSEMBLE:
                    sequence["sequence_id"] = new_sequence_id()
                    if smoothing is not None:
                        sequence["sequence_parameters"] = {"smoothing": smoothing}
                frames = frames_for(client, dec)
                frames_done = 0
                for (index, pts), result in client.infer_stream(frames, **sequence):
                    if enc is not None:
                        enc.write(result.rendered, pts)
                    if animation is not None:
                        animation.add(float(pts * info.time_base), result)
                    if lines is not None:
                        record = {
                            "frame": index,
                            "pts": pts,
                            "time": round(float(pts * info.time_base), 6),
                            "faces": faces_json(result),
                        }
                        lines.write(json.dumps(record) + "\n")
                    frames_done += 1
                    bar.update(1)
            names = (dec.name, enc.name if enc is not None else "none", transport_of(client))
        if animation is not None:
            animation.write(temp_mesh)
    frames = frames_done
    if info.frame_count and frames != info.frame_count:
        LOG.warning("%s: header says %d frames, decoded %d", source, info.frame_count, frames)
    return VideoStats(frames, time.perf_counter() - start, *names)


def refuse_images(source: Path) -> None:
    """VideoError for a still image given as a video (it would become a one-frame video)."""
    if Path(source).suffix.lower() in IMAGE_SUFFIXES:
        raise VideoError(
            f"{source} is an image, not a video: render it with `tddfa image {source} OUT.jpg`"
        )


def check_output_name(output: Path) -> None:
    """VideoError unless ``output`` ends in a container this client writes."""
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise VideoError(
            f"{output}: cannot write {output.suffix or 'a file without suffix'} video; name the "
            f"output {', '.join(OUTPUT_SUFFIXES)}"
        )


@contextlib.contextmanager
def _json_lines(path: Path | None) -> Iterator[TextIO | None]:
    """The JSON Lines file open for writing at ``path`` (None when there is none)."""
    if path is None:
        yield None
        return
    with open(path, "w") as handle:
        yield handle


def _encoder(path: Path | None, info, encoder: str, audio, gpu_id: int):
    """The encoder of ``path``, or a null context yielding None (no output video)."""
    if path is None:
        return contextlib.nullcontext(None)
    return open_encoder(path, info, encoder, audio, gpu_id=gpu_id)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "video",
        help="render a video through the server",
        description="Decode a video, send every frame to the tddfa ensemble with several "
        "frames in flight, and encode the rendered frames with the input's frame rate, "
        "timestamps and audio.",
    )
    parser.add_argument("input", type=Path, help="video to process")
    parser.add_argument(
        "output",
        type=Path,
        nargs="?",
        help="rendered video (.mp4, .mov or .mkv); may be left out with --mesh",
    )
    add_server_arguments(parser)
    parser.add_argument(
        "--json", type=Path, help="per-frame results as JSON Lines (default: not written)"
    )
    parser.add_argument(
        "--mesh",
        type=Path,
        metavar="ANIM.glb",
        help="also write every tracked face as one animated glTF binary (a mesh per track, "
        "expression morph targets, pose keyframes at the frames' timestamps) (default: not "
        "written)",
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
        default=4,
        metavar="N",
        help="requests in flight (default 4)",
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
    add_mode_arguments(parser)
    add_render_argument(parser)
    parser.set_defaults(func=run)


def model_for(mode: str) -> str:
    """The ensemble a video mode talks to: ``track`` -> tddfa_track, ``detect`` -> tddfa."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return SEQUENCE_ENSEMBLE if mode == "track" else STATELESS_ENSEMBLE


def outputs_for(
    mode: str, json_wanted: bool, rendered: bool = True, mesh: bool = False
) -> tuple[str, ...]:
    """What a video asks for: the rendered frame (unless not ``rendered``), plus the JSON
    fields when wanted, plus what an animated mesh needs."""
    names = ["RENDERED", "FACE_COUNT"] if rendered else ["FACE_COUNT"]
    if json_wanted:
        names += DEFAULT_OUTPUTS + (("TRACK_IDS",) if mode == "track" else ())
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


def choose_transport(
    shared_memory: str, decoder: str, url: str, protocol: str, model: str = "tddfa"
) -> str:
    """``--shared-memory auto`` resolved: "cuda" when frames can stay on the GPU end to end
    (NVDEC decodes, the server is on this host and the steps that read the frame run on the
    GPU, tritonclient's CUDA shared memory imports), else "auto" (system shared memory when
    local). An explicit choice is returned as given."""
    if shared_memory != "auto":
        return shared_memory
    nvdec = decoder == "nvdec" or (decoder == "auto" and nvidia_codec_available())
    if not nvdec or not is_local(normalize_url(url, protocol)):
        return "auto"
    if not served_on_gpu(url, protocol, model):
        LOG.debug("the server's models are not on the GPU: frames go through the host")
        return "auto"
    try:
        cuda_shm()
    except ClientError as exc:
        LOG.warning("NVDEC frames go through the host: %s", exc)
        return "auto"
    return "cuda"


def open_client(args: argparse.Namespace, outputs: tuple[str, ...]) -> FrameClient:
    """The FrameClient of ``tddfa video``; CUDA shared memory chosen automatically falls
    back to the host transport (with the reason) when the server refuses it."""
    transport = "none" if args.no_shm else args.shared_memory
    transport = choose_transport(
        transport, args.decoder, args.url, args.protocol, model_for(args.mode)
    )

    def client(mode: str) -> FrameClient:
        # a name behind which several servers answer (headless Service): frames go to all
        return open_frame_client(
            args.url,
            args.protocol,
            model=model_for(args.mode),
            outputs=outputs,
            in_flight=args.in_flight,
            shared_memory=mode,
            cuda_device=args.gpu,
            rendered_on_device=mode == "cuda",
            timeout=args.timeout,
            parameters=render_parameters(args.render),
        )

    if transport == "cuda" and args.shared_memory == "auto" and not args.no_shm:
        try:
            return client("cuda")
        except ClientError as exc:
            LOG.warning("CUDA shared memory refused (%s): frames go through the host", exc)
            return client("auto")
    return client(transport)


def uv_refusal(source: Path) -> str:
    """Why a video cannot be rendered in the uv mode, and what to do instead."""
    return (
        f"{source}: render mode {UV_MODE} returns each face's UV map, not the frame: use "
        "`tddfa image --render uv` on single frames"
    )


def run(args: argparse.Namespace) -> int:
    """Errors (VideoError, ClientError, OSError) reach the CLI's one-line error boundary."""
    if args.render == UV_MODE:
        raise VideoError(uv_refusal(args.input))
    if args.output is None and args.mesh is None:
        raise VideoError("name an output video, or --mesh ANIM.glb, or both")
    check_outputs(args.input, args.output, args.json, args.mesh)
    refuse_images(args.input)
    if args.output is not None:  # bad names, inputs, codecs fail before the server is asked
        check_output_name(args.output)
    require_codecs(args.decoder, args.encoder if args.output is not None else "auto")
    if args.mesh is not None:
        check_animation_name(args.mesh, args.mode)
    info = probe(args.input)
    outputs = outputs_for(
        args.mode, args.json is not None, args.output is not None, args.mesh is not None
    )
    model = load_face_model(args.bfm, args.assets) if args.mesh is not None else None
    with open_client(args, outputs) as client:
        mesh = None
        if model is not None:
            mesh = (args.mesh, open_animation(client, info, model, args.mesh_space))
        stats = process_video(
            client,
            args.input,
            args.output,
            args.json,
            args.decoder,
            args.encoder,
            gpu_id=args.gpu,
            smoothing=args.smoothing,
            mesh=mesh,
        )
    LOG.info(
        "%s: %d frames in %.1f s (%.1f frames/s; %s -> %s shared memory -> %s) -> %s",
        args.input,
        stats.frames,
        stats.seconds,
        stats.fps,
        stats.decoder,
        stats.transport,
        stats.encoder,
        ", ".join(str(p) for p in (args.output, args.mesh) if p is not None),
    )
    return 0
