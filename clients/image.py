"""``tddfa image IN OUT``: one image through the ensemble, the rendered image and JSON out.

Images are read and written with Pillow. A photo is turned to its display orientation
(EXIF Orientation) before it is sent, so boxes and landmarks are where a viewer sees them
and the output is stored upright. Animated images (GIF, APNG, WebP) are refused with the
command that processes them frame by frame (``tddfa video``). The rendered image and the
JSON are written together or not at all.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tddfa.contract import DEFAULT_OUTPUTS, RENDER_MODE_PARAMETER, RENDER_MODES
from tddfa.files import atomic_path, atomic_paths
from tddfa_clients.mesh import MeshTables, check_mesh_name, mesh_tables, write_faces_to
from tddfa_clients.mesh_space import DEFAULT_SPACE, SPACES
from tddfa_clients.output_paths import check_outputs
from tddfa_clients.replicas import open_frame_client
from tddfa_clients.triton_client import DEFAULT_TIMEOUT, FrameClient, FrameResult
from tddfa_tools.arguments import positive_float

LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
# 8-bit modes Pillow converts to RGB without losing information the pipeline uses.
_EIGHT_BIT_MODES = {"RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1"}


class ImageError(ValueError):
    """The file is not an 8-bit image this client can send."""


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB in display orientation (EXIF Orientation
    applied); raises ImageError naming the problem (not an image, 16-bit, animated).

    Pillow decodes JPEG with libjpeg exactly as OpenCV (and so the original 3DDFA_V2) does;
    FFmpeg's JPEG decoder differs by up to 20 grey levels, which moves landmarks.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            bits = _bits_per_channel(path, image)
            if bits > 8:
                raise ImageError(
                    f"{path}: {bits}-bit image ({image.mode}); convert it to 8-bit RGB first"
                )
            frames = int(getattr(image, "n_frames", 1) or 1)
            if frames > 1:
                raise ImageError(
                    f"{path}: animated {image.format} with {frames} frames; render it frame "
                    f"by frame with `tddfa video {path.name} OUT.mp4`"
                )
            upright = ImageOps.exif_transpose(image) or image
            return np.asarray(upright.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
        raise ImageError(f"{path}: cannot decode as an image ({reason})") from exc


def _bits_per_channel(path: Path, image: Image.Image) -> int:
    """Bits per channel of the stored picture. Pillow silently narrows 16-bit RGB PNGs to
    8 bits, so for PNG read the bit depth from the IHDR chunk (byte 24 of the file)."""
    if image.format == "PNG":
        with open(path, "rb") as f:
            header = f.read(25)
        return header[24] if len(header) == 25 else 8
    return 8 if image.mode in _EIGHT_BIT_MODES else 16


def output_format(path: str | Path) -> str:
    """The Pillow format for an output name (by suffix); ImageError for anything else."""
    fmt = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ImageError(
            f"{path}: cannot write {Path(path).suffix or 'a file without suffix'}; name the "
            f"output {' or '.join(sorted(OUTPUT_FORMATS))}"
        )
    return fmt


def encode_image(path: str | Path, image: np.ndarray, fmt: str) -> None:
    """Encode (H, W, 3) uint8 RGB to ``path`` as ``fmt`` (not atomic: give it a temporary)."""
    options = {"quality": 95} if fmt == "JPEG" else {}
    Image.fromarray(np.ascontiguousarray(image)).save(path, format=fmt, **options)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Encode (H, W, 3) uint8 RGB as PNG or JPEG (by suffix), atomically."""
    fmt = output_format(path)
    with atomic_path(path) as temp:
        encode_image(temp, image, fmt)


def faces_json(result: FrameResult) -> list[dict[str, Any]]:
    """Per face: box [x1, y1, x2, y2], score (the detector's; on a tracked frame FaceBoxes'
    score on the face's own crop: a per-face confidence), landmarks (3 x 68), pose,
    params (62), and track_id when the result came from the sequence ensemble."""
    faces = []
    for i in range(result.face_count):
        box = result.boxes[i]
        yaw, pitch, roll = (float(v) for v in result.pose[i])
        face = {
            "box": [round(float(v), 2) for v in box[:4]],
            "score": round(float(box[4]), 4),
            "landmarks": np.round(result.landmarks[i].astype(np.float64), 2).tolist(),
            "pose": {"yaw": round(yaw, 3), "pitch": round(pitch, 3), "roll": round(roll, 3)},
            "params": [float(f"{v:.6g}") for v in result.params[i]],  # 6 significant digits
        }
        if result.track_ids is not None:
            face["track_id"] = int(result.track_ids[i])
        faces.append(face)
    return faces


def frame_record(index: int, pts: int, time_base: Any, result: FrameResult) -> dict[str, Any]:
    """One video frame's JSON Lines record: frame index, pts, time (s), ``detected``
    (whether the detector ran on the frame: always in detect mode; false means the faces
    were tracked from the frames before), and the faces (:func:`faces_json`)."""
    return {
        "frame": index,
        "pts": pts,
        "time": round(float(pts * time_base), 6),
        "detected": True if result.detected is None else result.detected,
        "faces": faces_json(result),
    }


def image_document(result: FrameResult, width: int, height: int, models: dict) -> dict:
    """The JSON document of ``tddfa image``."""
    return {
        "image": {"width": width, "height": height},
        "faces": faces_json(result),
        "models": models,
    }


def json_text(document: dict[str, Any]) -> str:
    """The document as JSON, one face a line: {"image": ..., "models": ..., "faces": [...]}."""
    faces = document.get("faces", [])
    head = json.dumps({k: v for k, v in document.items() if k != "faces"})
    lines = [f'{head[:-1]}, "faces": [' if head != "{}" else '{"faces": [']
    lines += [
        f" {json.dumps(face)}{',' if i < len(faces) - 1 else ''}" for i, face in enumerate(faces)
    ]
    return "\n".join(lines) + "\n]}\n"


def process_image(
    client: FrameClient,
    source: Path,
    output: Path,
    json_path: Path | None,
    image: np.ndarray | None = None,
    mesh_path: Path | None = None,
    mesh: MeshTables | None = None,
    mesh_space: str = DEFAULT_SPACE,
) -> int:
    """Render one image (``image``: ``source`` already decoded); returns the face count.

    The output, the JSON and the mesh file (``mesh_path``: the client must ask for VERTICES;
    ``mesh``: the BFM's triangles and texture coordinates; ``mesh_space``: its frame,
    tddfa_clients.mesh_space) are staged together before the image is sent (a missing
    folder or a bad output name fails first) and appear together only when all are written.
    """
    fmt = output_format(output)
    targets = [output] + [p for p in (json_path, mesh_path) if p is not None]
    with atomic_paths(targets) as temps:
        image = read_image(source) if image is None else image
        result = client.infer(image)
        if result.rendered is None:
            raise ImageError("the server returned no RENDERED image")
        encode_image(temps[0], result.rendered, fmt)
        if json_path is not None:
            document = image_document(
                result, image.shape[1], image.shape[0], client.served_models()
            )
            temps[1].write_text(json_text(document))
        if mesh_path is not None:
            if result.vertices is None or mesh is None:
                raise ImageError("--mesh needs the VERTICES output and the BFM mesh tables")
            write_faces_to(temps[-1], mesh_path.suffix, image, result.vertices, mesh, mesh_space)
    return result.face_count


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """--url, --protocol and --timeout, shared by the clients."""
    parser.add_argument(
        "--url",
        default="localhost",
        help="server HOST[:PORT] (default: localhost, default port); a name that resolves to "
        "several addresses (a Kubernetes headless Service) spreads frames over all of them",
    )
    parser.add_argument(
        "--protocol", choices=("http", "grpc"), default="grpc", help="transport (default: grpc)"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds any one server call may take before the client gives up "
        "(default: %(default)s)",
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
    parser.add_argument(
        "--json", type=Path, help="also write the results as JSON here (default: not written)"
    )
    add_mesh_arguments(parser)
    add_render_argument(parser)
    add_server_arguments(parser)
    parser.set_defaults(func=run)


def add_mesh_arguments(parser: argparse.ArgumentParser) -> None:
    """--mesh, --mesh-space and --assets of the image and batch clients."""
    parser.add_argument(
        "--mesh",
        type=Path,
        metavar="MESH.glb|.obj|.ply",
        help="also write every face's mesh (colours from the image, BFM texture "
        "coordinates) to one file (default: not written)",
    )
    add_mesh_space_argument(parser)
    parser.add_argument(
        "--assets",
        type=Path,
        default=None,
        help="asset folder for --mesh's BFM tables (default: $TDDFA_ASSET_DIR, then the cache)",
    )


def add_mesh_space_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mesh-space",
        choices=SPACES,
        default=DEFAULT_SPACE,
        help="frame of --mesh: upright (default: right-handed, +Y up, metres, the picture at "
        "1 pixel = 1 mm centred on the origin; opens upright in viewers) or image (the "
        "VERTICES pixels: x right, y down, for overlays)",
    )


def add_render_argument(parser: argparse.ArgumentParser) -> None:
    """--render MODE, shared by the clients."""
    parser.add_argument(
        "--render",
        choices=RENDER_MODES,
        default=None,
        metavar="MODE",
        help=f"how faces are drawn: {', '.join(RENDER_MODES)} (default: the server's, shaded); "
        "uv returns each face's UV texture map instead of the frame",
    )


def render_parameters(mode: str | None) -> dict[str, str]:
    """The request parameters of ``--render MODE``."""
    return {} if mode is None else {RENDER_MODE_PARAMETER: mode}


def run(args: argparse.Namespace) -> int:
    """Errors (ImageError, ClientError, OSError) reach the CLI's one-line error boundary."""
    check_outputs(args.input, args.output, args.json, args.mesh)
    output_format(args.output)  # a bad output name or input fails before the server is asked
    if args.mesh is not None:
        check_mesh_name(args.mesh)
    image = read_image(args.input)
    tables = mesh_tables(args.assets) if args.mesh is not None else None
    outputs = (*DEFAULT_OUTPUTS, "VERTICES") if args.mesh is not None else DEFAULT_OUTPUTS
    with open_frame_client(
        args.url,
        args.protocol,
        in_flight=1,
        timeout=args.timeout,
        outputs=outputs,
        parameters=render_parameters(args.render),
    ) as client:
        count = process_image(
            client, args.input, args.output, args.json, image, args.mesh, tables, args.mesh_space
        )
    LOG.info("%s: %d face(s) -> %s", args.input, count, args.output)
    return 0
