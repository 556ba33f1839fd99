"""``tddfa video IN OUT``: render every frame of a video through the server.

Decode (NVDEC or PyAV) -> the ensemble, several frames in flight -> encode (NVENC or
libx264) with the input's timestamps, audio copied. Frames are sent in display orientation
(the input's rotation metadata applied) at their exact size, so the output plays upright
and odd sizes come back unchanged. The output and the ``--json`` JSON Lines file are
staged together under temporary names and renamed only when both are complete, so an
error or Ctrl-C leaves no file at all.
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
from typing import TextIO

import numpy as np
from tqdm import tqdm

from tddfa.files import atomic_paths
from tddfa_clients.image import add_server_arguments, faces_json
from tddfa_clients.triton_client import FrameClient
from tddfa_clients.video_io import (
    DECODERS,
    ENCODERS,
    OUTPUT_SUFFIXES,
    Decoder,
    VideoError,
    open_decoder,
    open_encoder,
    probe,
    require_codecs,
)
from tddfa_tools.arguments import positive_int

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
    """Render ``source`` into ``output`` (and ``json_path``); raises VideoError/ClientError.

    Nothing is written unless every output is complete.
    """
    check_output_name(output)
    info = probe(source)
    start = time.perf_counter()
    targets = [output] if json_path is None else [output, json_path]
    with atomic_paths(targets) as temps, _json_lines(temps[1:]) as lines:
        temp_video = temps[0]
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


def check_output_name(output: Path) -> None:
    """VideoError unless ``output`` ends in a container this client writes."""
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise VideoError(
            f"{output}: cannot write {output.suffix or 'a file without suffix'} video; name the "
            f"output {', '.join(OUTPUT_SUFFIXES)}"
        )


@contextlib.contextmanager
def _json_lines(paths: list[Path]) -> Iterator[TextIO | None]:
    """The JSON Lines file open for writing at ``paths[0]`` (None when there is none)."""
    if not paths:
        yield None
        return
    with open(paths[0], "w") as handle:
        yield handle


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
    parser.add_argument(
        "--in-flight",
        type=positive_int,
        default=4,
        metavar="N",
        help="requests in flight (default 4)",
    )
    parser.add_argument(
        "--no-shm", action="store_true", help="never use shared memory, even on localhost"
    )
    parser.add_argument("--decoder", choices=DECODERS, default="auto", help="default: auto")
    parser.add_argument("--encoder", choices=ENCODERS, default="auto", help="default: auto")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Errors (VideoError, ClientError, OSError) reach the CLI's one-line error boundary."""
    check_output_name(args.output)  # bad names, inputs, codecs fail before the server is asked
    probe(args.input)
    require_codecs(args.decoder, args.encoder)
    with FrameClient(
        args.url,
        args.protocol,
        outputs=("RENDERED", "FACE_COUNT", "FACE_BOXES", "LANDMARKS", "POSE", "PARAMS")
        if args.json
        else ("RENDERED", "FACE_COUNT"),
        in_flight=args.in_flight,
        shared_memory="none" if args.no_shm else "auto",
        timeout=args.timeout,
    ) as client:
        stats = process_video(
            client, args.input, args.output, args.json, args.decoder, args.encoder
        )
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
