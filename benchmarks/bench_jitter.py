"""(f) Landmark jitter and lag through the server: per-frame (tddfa) vs tracked (tddfa_track)
with and without smoothing, on clips with known motion.

A still photo (default JianzhuGuo.jpg, one face) moves along a smooth sub-pixel path
(tddfa_tools.dev.motion_clip); each frame's landmarks are mapped back through the known motion
onto the photo. jitter = mean frame-to-frame change there; spread = mean distance from the
landmarks' mean position (jitter plus lag). The bar: tracked + smoothed jitter <= 50 %
of per-frame, spread <= 1.2x per-frame, one track id. A second, faster clip shows the
trade-off a causal filter makes under fast motion.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    append_results,
    base_parser,
    format_table,
    server_for,
    setup_logging,
)

CLIPS = {"slow (8 px amplitude)": 8.0, "fast (30 px amplitude)": 30.0}


def landmarks(url: str, frames: np.ndarray, mode: str, smoothing: bool | None) -> tuple:
    """(T, 3, 68) landmarks of the best face (slot 0) of every frame, and the track ids."""
    from tddfa_clients.triton_client import FrameClient, new_sequence_id
    from tddfa_clients.video import model_for

    outputs = ("FACE_COUNT", "LANDMARKS") + (("TRACK_IDS",) if mode == "track" else ())
    with FrameClient(url, "grpc", model=model_for(mode), outputs=outputs, in_flight=4) as client:
        sequence = {}
        if mode == "track":
            sequence["sequence_id"] = new_sequence_id()
            if smoothing is not None:
                sequence["sequence_parameters"] = {"smoothing": smoothing}
        results = [r for _, r in client.infer_stream(enumerate(frames), **sequence)]
    missing = [i for i, r in enumerate(results) if r.face_count < 1]
    if missing:
        raise SystemExit(f"no face in frames {missing[:10]} ({mode})")
    ids = {int(r.track_ids[0]) for r in results if r.track_ids is not None}
    return np.stack([r.landmarks[0] for r in results]), ids


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument(
        "--photo", type=Path, default=REPO_ROOT.parent / "shared/assets/images/JianzhuGuo.jpg"
    )
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--url", help="a running server's gRPC host:port (default: start one)")
    args = parser.parse_args()
    setup_logging(args.verbose)
    from PIL import Image

    from tddfa_tools.dev.motion_clip import make_clip, measure

    photo = np.asarray(Image.open(args.photo).convert("RGB"))
    rows = []
    with server_for(args.repository, args.url) as url:
        for clip_name, amplitude in CLIPS.items():
            clip = make_clip(photo, frames=args.frames, still=15, amplitude=amplitude)
            base = None
            for label, mode, smoothing in (
                ("per-frame (tddfa)", "detect", None),
                ("tracked, no smoothing", "track", False),
                ("tracked + smoothing", "track", None),
            ):
                marks, ids = landmarks(url, clip.frames, mode, smoothing)
                result = measure(marks, clip.affines)
                base = base or result
                rows.append(
                    [
                        clip_name,
                        label,
                        result.jitter,
                        f"{100 * result.jitter / base.jitter:.0f} %",
                        result.spread,
                        f"{result.spread / base.spread:.2f}x",
                        ",".join(map(str, sorted(ids))) or "-",
                    ]
                )
    table = format_table(
        ["clip", "method", "jitter px", "vs per-frame", "spread px", "vs per-frame", "track ids"],
        rows,
    )
    print(table)
    if not args.no_results:
        append_results(
            "(f) landmark jitter and lag through the server",
            table,
            [
                f"clip: {args.photo.name} moved in a 640x360 frame for {args.frames} frames "
                "(15 still), Lissajous path + 3 % zoom + 2 degree roll; px of the photo",
                f"repository: {args.repository}; smoothing = the face_tracker config's defaults",
            ],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
