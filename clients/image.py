"""``tddfa image IN OUT``: one image through the ensemble, the rendered image and JSON out.

Images are read and written with PyAV (FFmpeg's PNG/JPEG codecs), so the client needs
no imaging library beyond what video already needs.
"""

from __future__ import annotations

import argparse
import json
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from tddfa_clients.triton_client import ClientError, FrameClient, FrameResult
from tddfa_clients.video_io import atomic_output

LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_ENCODERS = {
    ".png": ("png", "rgb24"),
    ".jpg": ("mjpeg", "yuvj444p"),
    ".jpeg": ("mjpeg", "yuvj444p"),
}


class ImageError(ValueError):
    """The file is not an 8-bit image this client can send."""


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB; raises ImageError naming the problem."""
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ImageError(f"{path}: not an image (no picture stream)")
            frame = next(container.decode(video=0), None)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
        raise ImageError(f"{path}: cannot decode as an image ({reason})") from exc
    if frame is None:
        raise ImageError(f"{path}: the file holds no decodable picture")
    bits = max(c.bits for c in frame.format.components)
    if bits > 8:
        raise ImageError(
            f"{path}: {bits}-bit image ({frame.format.name}); convert it to 8-bit RGB first"
        )
    return frame.to_ndarray(format="rgb24")


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Encode (H, W, 3) uint8 RGB as PNG or JPEG (by suffix), atomically."""
    path = Path(path)
    codec, pix_fmt = _ENCODERS.get(path.suffix.lower(), (None, None))
    if codec is None:
        raise ValueError(f"{path}: output must end in {sorted(_ENCODERS)}")
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height = image.shape[1], image.shape[0]
    ctx.pix_fmt = pix_fmt
    ctx.time_base = Fraction(1, 25)  # required by the encoder API, meaningless for one picture
    if codec == "mjpeg":
        ctx.qscale = 2  # high quality
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    data = b"".join(
        bytes(p) for p in [*ctx.encode(frame.reformat(format=pix_fmt)), *ctx.encode(None)]
    )
    with atomic_output(path) as temp:
        temp.write_bytes(data)


def faces_json(result: FrameResult) -> list[dict[str, Any]]:
    """Per face: box [x1, y1, x2, y2], score, landmarks (3 x 68), pose, params (62)."""
    faces = []
    for i in range(result.face_count):
        box = result.boxes[i]
        yaw, pitch, roll = (float(v) for v in result.pose[i])
        faces.append(
            {
                "box": [round(float(v), 2) for v in box[:4]],
                "score": round(float(box[4]), 4),
                "landmarks": np.round(result.landmarks[i], 2).tolist(),
                "pose": {"yaw": round(yaw, 3), "pitch": round(pitch, 3), "roll": round(roll, 3)},
                "params": [float(v) for v in result.params[i]],
            }
        )
    return faces


def image_document(result: FrameResult, width: int, height: int, models: dict) -> dict:
    """The JSON document of ``tddfa image``."""
    return {
        "image": {"width": width, "height": height},
        "faces": faces_json(result),
        "models": models,
    }


def write_json(path: str | Path, document: Any) -> None:
    """Write ``document`` as indented JSON, atomically."""
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(document, indent=1) + "\n")


def process_image(client: FrameClient, source: Path, output: Path, json_path: Path | None) -> int:
    """Render one image; returns the number of faces."""
    image = read_image(source)
    result = client.infer(image)
    write_image(output, result.rendered)
    if json_path is not None:
        document = image_document(result, image.shape[1], image.shape[0], client.served_models())
        write_json(json_path, document)
    return result.face_count


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """--url and --protocol, shared by the clients."""
    parser.add_argument(
        "--url", default="localhost", help="server HOST[:PORT] (default: localhost, default port)"
    )
    parser.add_argument(
        "--protocol", choices=("http", "grpc"), default="grpc", help="transport (default: grpc)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "image",
        help="render one image through the server",
        description="Send one image (JPEG/PNG, 8-bit) to the tddfa ensemble, write the image "
        "with every face's 3D mesh drawn on it and, with --json, the boxes, landmarks, pose "
        "and 3DMM parameters.",
    )
    parser.add_argument("input", type=Path, help="image to process")
    parser.add_argument("output", type=Path, help="rendered image (.png or .jpg)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    add_server_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        with FrameClient(args.url, args.protocol, in_flight=1) as client:
            count = process_image(client, args.input, args.output, args.json)
    except (ImageError, ClientError, OSError) as exc:
        LOG.error("%s", exc)
        return 1
    LOG.info("%s: %d face(s) -> %s", args.input, count, args.output)
    return 0
