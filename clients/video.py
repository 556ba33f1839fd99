"""``tddfa video IN OUT``: render every frame of a video through the server.

Decode (NVDEC or PyAV) -> the ensemble, several frames in flight -> encode (NVENC or
libx264) with the input's timestamps, audio copied. The output (and the ``--json``
JSON Lines file) is written under a temporary name and renamed when complete, so an
error or Ctrl-C leaves no half-written file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from tddfa.contract import RENDER_MODE_PARAMETER, UV_MODE
from tddfa_clients.image import (
    ImageError,
    add_render_argument,
    add_server_arguments,
    faces_json,
    render_parameters,
)
from tddfa_clients.triton_client import ClientError, FrameClient
from tddfa_clients.video_io import (
    DECODERS,
    ENCODERS,
    Decoder,
    VideoError,
    atomic_output,
    open_decoder,
    open_encoder,
    probe,
)

LOG = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")


@dataclasses.dataclass(frozen=True)
class VideoStats:
    frames: int
    seconds: float
    decoder: str
    encoder: str

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def host_frames(decoder: Decoder) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """((index, pts), host RGB image) for each frame: the CPU transport path.

    The CUDA path (NVDEC frames written straight into CUDA shared memory) belongs
    beside this function and is chosen by the client when the server is local on a GPU.
    """
    for frame in decoder:
        yield (frame.index, frame.pts), frame.host_image()


def process_video(
    client: FrameClient,
    source: Path,
    output: Path,
    json_path: Path | None = None,
    decoder: str = "auto",
    encoder: str = "auto",
    progress: bool = True,
    description: str | None = None,
) -> VideoStats:
    """Render ``source`` into ``output``; raises VideoError/ClientError on failure."""
    if client.parameters.get(RENDER_MODE_PARAMETER) == UV_MODE:
        raise VideoError(
            f"{source}: render mode {UV_MODE} returns each face's UV map, not the frame: "
            "use `tddfa image --render uv` on single frames"
        )
    info = probe(source)
    start = time.perf_counter()
    with atomic_output(output) as temp_video, _json_lines(json_path) as lines:
        with (
            open_decoder(source, decoder) as dec,
            open_encoder(temp_video, info, encoder, source if info.has_audio else None) as enc,
        ):
            LOG.debug("decoder: %s, encoder: %s", dec.name, enc.name)
            bar = tqdm(
                total=info.frame_count or None,
                unit="frame",
                desc=description or source.name,
                disable=not progress,
                leave=False,
            )
            with bar:
                for (index, pts), result in client.infer_stream(host_frames(dec)):
                    enc.write(result.rendered, pts)
                    if lines is not None:
                        record = {
                            "frame": index,
                            "pts": pts,
                            "time": round(float(pts * info.time_base), 6),
                            "faces": faces_json(result),
                        }
                        lines.write(json.dumps(record) + "\n")
                    bar.update(1)
            frames = enc.frames_written
            names = (dec.name, enc.name)
    if info.frame_count and frames != info.frame_count:
        LOG.warning("%s: header says %d frames, decoded %d", source, info.frame_count, frames)
    return VideoStats(frames, time.perf_counter() - start, *names)


class _json_lines:  # noqa: N801  (used like contextlib's lower-case managers)
    """Atomic JSON Lines writer (or a no-op when ``path`` is None)."""

    def __init__(self, path: Path | None):
        self._path = path
        self._atomic = atomic_output(path) if path is not None else None
        self._file: TextIO | None = None

    def __enter__(self) -> TextIO | None:
        if self._atomic is None:
            return None
        temp = self._atomic.__enter__()
        self._file = open(temp, "w")  # noqa: SIM115  (closed in __exit__)
        return self._file

    def __exit__(self, *exc: object) -> bool | None:
        if self._atomic is None:
            return None
        self._file.close()
        return self._atomic.__exit__(*exc)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "video",
        help="render a video through the server",
        description="Decode a video, send every frame to the tddfa ensemble with several "
        "frames in flight, and encode the rendered frames with the input's frame rate, "
        "timestamps and audio.",
    )
    parser.add_argument("input", type=Path, help="video to process")
    parser.add_argument("output", type=Path, help="rendered video (.mp4, .mov or .mkv)")
    add_server_arguments(parser)
    parser.add_argument("--json", type=Path, help="per-frame results as JSON Lines")
    add_render_argument(parser)
    parser.add_argument(
        "--in-flight", type=int, default=4, metavar="N", help="requests in flight (default 4)"
    )
    parser.add_argument(
        "--no-shm", action="store_true", help="never use shared memory, even on localhost"
    )
    parser.add_argument("--decoder", choices=DECODERS, default="auto", help="default: auto")
    parser.add_argument("--encoder", choices=ENCODERS, default="auto", help="default: auto")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        with FrameClient(
            args.url,
            args.protocol,
            outputs=("RENDERED", "FACE_COUNT", "FACE_BOXES", "LANDMARKS", "POSE", "PARAMS")
            if args.json
            else ("RENDERED", "FACE_COUNT"),
            in_flight=args.in_flight,
            shared_memory="none" if args.no_shm else "auto",
            parameters=render_parameters(args.render),
        ) as client:
            stats = process_video(
                client, args.input, args.output, args.json, args.decoder, args.encoder
            )
    except (VideoError, ImageError, ClientError, OSError) as exc:
        LOG.error("%s", exc)
        return 1
    LOG.info(
        "%s: %d frames in %.1f s (%.1f frames/s; %s -> %s) -> %s",
        args.input,
        stats.frames,
        stats.seconds,
        stats.fps,
        stats.decoder,
        stats.encoder,
        args.output,
    )
    return 0
