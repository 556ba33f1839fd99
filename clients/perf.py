"""``tddfa perf``: throughput and latency of the ensemble with real frames, concurrency sweep,
CSV.

By default only the outputs a video client asks for are requested (RENDERED; ``--outputs``
for others) by this project's own closed-loop load over gRPC (tddfa_clients.perf_load):
perf_analyzer 2.51 requests every output of a model. ``--outputs all`` runs perf_analyzer
from the tritonclient wheel over HTTP and/or gRPC; its random data is not a valid image, so
frames decoded from a sample video are written as ``--input-data`` JSON (raw uint8 bytes,
base64, with their shape).

The binary needs Debian's ``libb64-0d`` (``apt-get install -y libb64-0d``) and a CUDA 12
runtime library (the ``nvidia-cuda-runtime-cu12`` wheel; its lib folder is put on
LD_LIBRARY_PATH here, no GPU needed).
"""

from __future__ import annotations

import argparse
import base64
import csv
import ctypes.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tddfa.contract import STATELESS_ENSEMBLE
from tddfa_clients.triton_client import is_local, normalize_url
from tddfa_clients.video import model_for
from tddfa_clients.video_io import open_decoder, probe
from tddfa_tools.arguments import positive_int
from tddfa_tools.serve import admin_token

LOG = logging.getLogger(__name__)

MODEL = STATELESS_ENSEMBLE
SAMPLE_VIDEO = "video/emma720.mp4"


class PerfError(RuntimeError):
    """perf_analyzer cannot run here (missing binary or library)."""


def find_perf_analyzer() -> Path:
    """perf_analyzer from the tritonclient wheel (installed beside the interpreter)."""
    candidates = [Path(sys.executable).parent / "perf_analyzer"]
    try:
        import tritonclient

        candidates.append(Path(tritonclient.__file__).parent / "bin" / "perf_analyzer")
    except ImportError:
        pass
    found = shutil.which("perf_analyzer")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise PerfError(
        "perf_analyzer not found; install the manylinux wheel: pip install 'tritonclient[all]==2.51.0'"
    )


def cuda_runtime_lib_dir() -> Path | None:
    """The lib folder of the nvidia-cuda-runtime-cu12 wheel, if installed."""
    try:
        import nvidia.cuda_runtime as runtime
    except ImportError:
        return None
    for base in runtime.__path__:
        lib = Path(base) / "lib"
        if any(lib.glob("libcudart.so.12*")):
            return lib
    return None


def _on_library_path(pattern: str) -> bool:
    """True when a folder of LD_LIBRARY_PATH holds a file matching ``pattern`` (the bundled
    libraries of a wheel, whose names ctypes.util.find_library does not match)."""
    folders = [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    return any(any(folder.glob(pattern)) for folder in folders if folder.is_dir())


def perf_environment() -> dict[str, str]:
    """os.environ plus the library path perf_analyzer needs; raises PerfError if missing."""
    if ctypes.util.find_library("b64") is None and not _on_library_path("libb64*.so*"):
        raise PerfError("perf_analyzer needs libb64: apt-get install -y libb64-0d")
    env = dict(os.environ)
    lib = cuda_runtime_lib_dir()
    if (
        lib is None
        and ctypes.util.find_library("cudart") is None
        and not _on_library_path("libcudart*.so.12*")
    ):
        raise PerfError("perf_analyzer needs libcudart.so.12: pip install nvidia-cuda-runtime-cu12")
    if lib is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p
        )
    return env


def write_input_data(
    video: Path, frames: int, path: Path, stride: int = 1, sequence: bool = False
) -> tuple[int, ...]:
    """Write ``frames`` frames of ``video`` as perf_analyzer JSON; returns the frame shape.

    Format: {"data": [{"IMAGE": {"content": {"b64": <raw uint8 bytes>}, "shape": [H, W, 3]}}]}
    (shape without the batch dimension; perf_analyzer adds it with -b). With ``sequence``
    the frames form one stream, {"data": [[frame 0, frame 1, ...]]}, which perf_analyzer
    replays in order as the steps of each sequence.
    """
    entries, shape = [], None
    with open_decoder(video, "cpu") as decoder:
        for frame in decoder:
            if frame.index % stride:
                continue
            image = frame.host_image()
            shape = tuple(image.shape)
            content = base64.b64encode(image.tobytes()).decode("ascii")
            entries.append({"IMAGE": {"content": {"b64": content}, "shape": list(shape)}})
            if len(entries) >= frames:
                break
    if not entries:
        raise PerfError(f"{video}: no frames decoded")
    path.write_text(json.dumps({"data": [entries] if sequence else entries}))
    return shape


def perf_command(
    binary: Path,
    url: str,
    protocol: str,
    concurrency: str,
    input_data: Path,
    csv_path: Path,
    frame_shape: tuple[int, ...],
    shared_memory: str = "none",
    measurement_ms: int = 8000,
    model: str = MODEL,
    stability_percentage: int = 25,
    max_trials: int = 5,
    sequence_length: int | None = None,
) -> list[str]:
    """The perf_analyzer command line (interval and trials sized for a CPU server).
    ``sequence_length``: frames per sequence for the sequence ensemble (each concurrent
    perf_analyzer context runs one sequence at a time, with its own sequence id)."""
    command = [
        str(binary),
        "-m", model,
        "-u", normalize_url(url, protocol),
        "-i", protocol,
        "--input-data", str(input_data),
        "--concurrency-range", concurrency,
        "--measurement-mode", "time_windows",
        "--measurement-interval", str(measurement_ms),
        "--max-trials", str(max_trials),
        "--stability-percentage", str(stability_percentage),
        "-f", str(csv_path),
        "--shared-memory", shared_memory,
    ]  # fmt: skip
    if sequence_length is not None:
        command += [
            "--sequence-length", str(sequence_length),
            "--sequence-length-variation", "0",
            "--sequence-id-range", "1:1000000",
        ]  # fmt: skip
    if shared_memory != "none":
        # the largest output is RENDERED, the same size as the frame
        size = 1
        for dim in frame_shape:
            size *= dim
        command += ["--output-shared-memory-size", str(max(size, 1 << 20))]
        # region registration is a restricted API of servers started by `tddfa serve`
        token = admin_token.find_token(normalize_url(url, protocol))
        for key, value in (admin_token.headers(token, protocol) or {}).items():
            command += ["-H", f"{key}:{value}"]
    return command


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def summary_table(rows: list[dict[str, str]], protocol: str) -> str:
    """Concurrency, throughput, latency percentiles (ms) as a fixed-width table."""
    lines = [f"{'protocol':8} {'conc':>4} {'infer/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"]
    for row in rows:

        def ms(key: str, row: dict = row) -> str:
            value = row.get(key)
            return f"{float(value) / 1000:8.1f}" if value not in (None, "") else f"{'-':>8}"

        lines.append(
            f"{protocol:8} {row.get('Concurrency', '?'):>4} "
            f"{float(row.get('Inferences/Second', 0)):9.2f} "
            f"{ms('p50 latency')} {ms('p90 latency')} {ms('p99 latency')}"
        )
    return "\n".join(lines)


def sweep(text: str) -> list[int]:
    """perf_analyzer's START:END:STEP (END and STEP optional) as a list of levels."""
    try:
        parts = [int(p) for p in text.split(":")]
        start, end, step = (parts + [parts[0], 1][len(parts) - 1 :])[:3]
        levels = list(range(start, end + 1, step))
    except (ValueError, IndexError):
        levels = []
    if not levels or min(levels) < 1:
        raise PerfError(f"--concurrency takes START:END:STEP of positive numbers, got {text!r}")
    return levels


def run_client_load(args: argparse.Namespace) -> list[tuple[str, list[dict[str, str]]]]:
    """The client-like load (tddfa_clients.perf_load): only ``--outputs`` requested."""
    from tddfa_clients.perf_load import CSV_FIELDS, LoadSettings, measure

    if args.protocol != "grpc":
        raise PerfError(
            "the client-like load (--outputs) runs over gRPC: use --protocol grpc, or "
            "--outputs all for perf_analyzer over HTTP (every output requested)"
        )
    levels = sweep(args.concurrency)
    frames = read_frames(args.video, args.frames)
    sequence = args.mode == "track"
    settings = LoadSettings(
        url=args.url, model=args.model or model_for(args.mode),
        outputs=tuple(o for o in args.outputs.split(",") if o),
        shared_memory=shared_memory_for(args.shared_memory, args.url, "grpc"),
        sequence_length=args.frames if sequence else None,
        measurement_ms=args.measurement_interval,
    )  # fmt: skip
    # An unmeasured window at the top level first: on a server just started, the instances'
    # first requests filled a 2 s window (0.5 infer/s at concurrency 1, H100 2026-12-07).
    LOG.info("warm-up: concurrency %d, not measured", max(levels))
    measure(settings, frames, max(levels), args.processes)
    rows = []
    for level in levels:
        row = measure(settings, frames, level, args.processes)
        LOG.info("concurrency %d: %.1f infer/s", level, row["Inferences/Second"])
        rows.append({k: str(v) for k, v in row.items()})
    if args.csv is not None:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    return [("grpc", rows)]


def read_frames(video: Path, count: int) -> list:
    """The first ``count`` frames of ``video`` as host RGB arrays."""
    frames = []
    with open_decoder(video, "cpu") as decoder:
        for frame in decoder:
            frames.append(frame.host_image())
            if len(frames) >= count:
                break
    if not frames:
        raise PerfError(f"{video}: no frames decoded")
    return frames


def run_perf(args: argparse.Namespace) -> list[tuple[str, list[dict[str, str]]]]:
    binary = find_perf_analyzer()
    env = perf_environment()
    protocols = ["http", "grpc"] if args.protocol == "both" else [args.protocol]
    if args.protocol == "both" and not args.grpc_url:
        args.grpc_url = (
            args.url.split("://", 1)[-1].rsplit(":", 1)[0] if ":" in args.url else args.url
        )
    results = []
    with tempfile.TemporaryDirectory(prefix="tddfa-perf-") as tmp:
        data = Path(tmp) / "input_data.json"
        sequence = args.mode == "track"
        shape = write_input_data(args.video, args.frames, data, sequence=sequence)
        LOG.info("input data: %d frames of %s, shape %s", args.frames, args.video.name, shape)
        for protocol in protocols:
            url = args.grpc_url if protocol == "grpc" and args.grpc_url else args.url
            csv_path = _csv_path(args.csv, protocol, len(protocols) > 1) or Path(tmp) / "out.csv"
            command = perf_command(
                binary, url, protocol, args.concurrency, data, csv_path, shape,
                shared_memory_for(args.shared_memory, url, protocol), args.measurement_interval, args.model or model_for(args.mode),
                args.stability_percentage, args.max_trials, args.frames if sequence else None,
            )  # fmt: skip
            LOG.info("running: %s", " ".join(command))
            completed = subprocess.run(command, env=env, capture_output=True, text=True)
            if completed.returncode != 0:
                tail = (completed.stdout + completed.stderr).strip().splitlines()[-15:]
                raise PerfError(f"perf_analyzer ({protocol}) failed:\n" + "\n".join(tail))
            LOG.debug("%s", completed.stdout)
            results.append((protocol, read_csv(csv_path)))
    return results


def shared_memory_for(mode: str, url: str, protocol: str) -> str:
    """``--shared-memory auto`` resolved: system when the server is on this host and its admin
    token (needed to register regions) is readable, else none."""
    if mode != "auto":
        return mode
    address = normalize_url(url, protocol)
    return "system" if is_local(address) and admin_token.find_token(address) else "none"


def _csv_path(base: Path | None, protocol: str, several: bool) -> Path | None:
    if base is None:
        return None
    return base.with_name(f"{base.stem}-{protocol}{base.suffix}") if several else base


def _default_video() -> Path | None:
    root = os.environ.get("TDDFA_ASSET_DIR")
    return Path(root) / SAMPLE_VIDEO if root else None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "perf",
        help="perf_analyzer on the ensemble with real frames",
        description="Write real frames from a video as perf_analyzer input data and run a "
        "concurrency sweep against the tddfa ensemble; prints a summary and writes CSV.",
    )
    parser.add_argument(
        "--url", default="localhost", help="server HOST[:PORT] (the protocol's default port)"
    )
    parser.add_argument(
        "--grpc-url",
        metavar="HOST[:PORT]",
        help="gRPC endpoint for --protocol both (default: --url's host, port 8001)",
    )
    parser.add_argument(
        "--protocol",
        choices=("http", "grpc", "both"),
        default="grpc",
        help="transport; both: one sweep each (default: grpc)",
    )
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--mode",
        choices=("detect", "track"),
        default="track",
        help="track (default, as every client): sequences of --frames consecutive frames to "
        "tddfa_track (perf_analyzer's sequence mode); detect: independent frames to tddfa",
    )
    parser.add_argument(
        "--concurrency", default="1:4:1", metavar="START:END:STEP", help="default 1:4:1"
    )
    parser.add_argument(
        "--frames", type=positive_int, default=16, help="distinct frames (default 16)"
    )
    parser.add_argument(
        "--video", type=Path, default=_default_video(),
        help=f"source of the frames (default: $TDDFA_ASSET_DIR/{SAMPLE_VIDEO})",
    )  # fmt: skip
    parser.add_argument(
        "--shared-memory", choices=("auto", "none", "system", "cuda"), default="auto",
        help="how perf_analyzer passes tensors: system/cuda need the server on this host; "
        "auto (default): system for a local server whose admin token is readable, else none",
    )  # fmt: skip
    parser.add_argument(
        "--measurement-interval", type=positive_int, default=8000, metavar="MS",
        help="perf_analyzer window in ms (default 8000, sized for a CPU server)",
    )  # fmt: skip
    parser.add_argument(
        "--stability-percentage", type=positive_int, default=25, metavar="PCT",
        help="windows count as stable within this spread (default 25; raise it on a busy host)",
    )  # fmt: skip
    parser.add_argument(
        "--max-trials",
        type=positive_int,
        default=5,
        help="windows tried per concurrency (default 5)",
    )
    parser.add_argument(
        "--outputs", default="RENDERED", metavar="LIST|all",
        help="outputs to request, comma-separated (default RENDERED: what a video client asks "
        "for; FACE_COUNT always), measured by this client's own load over gRPC; `all`: "
        "perf_analyzer, which requests every output (VERTICES included)",
    )  # fmt: skip
    parser.add_argument(
        "--processes", type=positive_int, default=1,
        help="client processes the load is spread over (default 1; --outputs other than all)",
    )  # fmt: skip
    parser.add_argument(
        "--csv", type=Path, help="write the sweep's CSV here (default: not written)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Errors (PerfError, VideoError, OSError) reach the CLI's one-line error boundary."""
    if args.video is None:
        raise PerfError("no video to take frames from: pass --video FILE or set TDDFA_ASSET_DIR")
    probe(args.video)  # a missing or broken video is named before perf_analyzer is looked for
    results = run_perf(args) if args.outputs == "all" else run_client_load(args)
    for protocol, rows in results:
        sys.stdout.write(summary_table(rows, protocol) + "\n")
    return 0
