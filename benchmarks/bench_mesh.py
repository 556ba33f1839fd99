"""Benchmark (i): what `--mesh anim.glb` adds to `tddfa video`.

Runs the real command in a fresh process each time (as a user does: imports, the BFM
tables, the export), alternating, ``--repeats`` times each, against one server:

- ``video``: ``tddfa video IN OUT.mp4`` (the baseline);
- ``video + mesh``: ``tddfa video IN OUT.mp4 --mesh anim.glb``;
- ``mesh only``: ``tddfa video IN --mesh anim.glb`` (nothing rendered or encoded).

Prints the median wall time of each, the export's share (video + mesh vs video; the
bar: <= 10 %), the .glb size, its tracks and morph targets. On a shared machine the
runs' wall times scatter more than the export costs, so the export's own work is also
timed in-process on the served results of the same video (BFM tables loaded, every frame
added, the file written: what ``--mesh`` adds to one run) and set against the baseline.

  .venv/bin/python benchmarks/bench_mesh.py --video ../shared/assets/video/two_faces_360p.mp4
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common

VARIANTS = ("video", "video + mesh", "mesh only")


def command(variant: str, video: Path, out: Path, url: str, bfm: Path) -> list[str]:
    tddfa = [sys.executable, "-m", "tddfa_tools.cli", "video", str(video)]
    server = ["--url", url]
    if variant == "video":
        return [*tddfa, str(out / "out.mp4"), *server]
    mesh = ["--mesh", str(out / "anim.glb"), "--bfm", str(bfm)]
    if variant == "video + mesh":
        return [*tddfa, str(out / "out.mp4"), *mesh, *server]
    return [*tddfa, *mesh, *server]


def main() -> int:
    parser = _common.base_parser(__doc__)
    parser.add_argument("--url", default=None, help="a running server (default: start one)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _common.setup_logging(args.verbose)
    out = _common.WORK_DIR / "mesh"
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with _common.server_for(args.repository, args.url) as url:
        subprocess.run(command("video", args.video, out, url, args.repository), check=True)  # warm
        for _ in range(args.repeats):
            for variant in VARIANTS:
                start = time.perf_counter()
                subprocess.run(
                    command(variant, args.video, out, url, args.repository),
                    check=True,
                    stderr=subprocess.DEVNULL,
                )
                times[variant].append(time.perf_counter() - start)
        export = _export_seconds(url, args.video, args.repository, out, args.repeats)
    medians = {v: statistics.median(t) for v, t in times.items()}
    extra = medians["video + mesh"] / medians["video"] - 1
    summary = _glb_summary(out / "anim.glb")
    rows = [(v, medians[v], " ".join(f"{t:.2f}" for t in times[v])) for v in VARIANTS]
    table = _common.format_table(("run", "median s", "each s"), rows)
    notes = [
        f"video: {args.video.name}; {args.repeats} runs each, alternating, fresh processes",
        f"the export adds {100 * extra:+.1f} % to `tddfa video` (bar: <= 10 %) by the medians",
        f"the export's own work, in-process: {export:.2f} s (median), "
        f"{100 * export / medians['video']:.1f} % of the baseline's median",
        f"anim.glb: {summary}",
    ]
    print(table)
    print("\n".join(notes))
    if not args.no_results:
        _common.append_results("(i) `tddfa video --mesh`: the export's cost", table, notes)
    return 0


def _export_seconds(url: str, video: Path, bfm: Path, out: Path, repeats: int) -> float:
    """Median seconds of what --mesh adds to a run: load the face model, add every frame's
    served result, write the .glb (the results are fetched once, untimed)."""
    from tddfa.contract import SEQUENCE_ENSEMBLE
    from tddfa_clients.mesh_animation import open_animation
    from tddfa_clients.mesh_model import load_face_model
    from tddfa_clients.triton_client import FrameClient, new_sequence_id
    from tddfa_clients.video import host_frames
    from tddfa_clients.video_io import open_decoder, probe

    info = probe(video)
    outputs = ("FACE_COUNT", "PARAMS", "LANDMARKS", "TRACK_IDS")
    with FrameClient(url, "grpc", model=SEQUENCE_ENSEMBLE, outputs=outputs) as client:
        with open_decoder(video, "cpu") as decoder:
            frames = list(client.infer_stream(host_frames(decoder), sequence_id=new_sequence_id()))
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            animation = open_animation(client, info, load_face_model(bfm), "upright")
            for (_, pts), result in frames:
                animation.add(float(pts * info.time_base), result)
            animation.write(out / "export.glb")
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _glb_summary(path: Path) -> str:
    import pygltflib

    gltf = pygltflib.GLTF2().load(str(path))
    targets = [len(m.primitives[0].targets or []) for m in gltf.meshes]
    return (
        f"{path.stat().st_size / 1e6:.1f} MB, {len(gltf.meshes)} track(s), morph targets "
        f"{targets}, {gltf.asset.extras['tddfa']['frames']} frames"
    )


if __name__ == "__main__":
    raise SystemExit(main())
