"""Helpers shared by the benchmark commands: machine description, sample frames,
a server for the run, and the RESULTS.md writer.

Each ``bench_*.py`` script is one command (run it with the project's interpreter,
``.venv/bin/python benchmarks/bench_....py --help``); this module is imported from the
script's own folder.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tddfa_tools.locations import default_repository

LOG = logging.getLogger("benchmarks")

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
DEFAULT_REPOSITORY = default_repository()  # where `tddfa build` writes
WORK_DIR = REPO_ROOT / "build" / "bench"  # git-ignored scratch (clips, outputs)
SAMPLE_VIDEO = Path("video") / "emma720.mp4"


def default_video() -> Path:
    """$TDDFA_ASSET_DIR/video/emma720.mp4, else ../shared/assets beside the repository."""
    root = os.environ.get("TDDFA_ASSET_DIR") or REPO_ROOT.parent / "shared" / "assets"
    return Path(root) / SAMPLE_VIDEO


def has_cuda() -> bool:
    """True when a CUDA device is usable (through PyTorch or CuPy)."""
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            return True
    with contextlib.suppress(Exception):
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    return False


def gpu_names() -> list[str]:
    """Names of the visible NVIDIA GPUs (empty without one)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line: CPU model, cores, GPU(s)."""
    gpus = gpu_names()
    gpu = ", ".join(gpus) if gpus else "no GPU"
    return f"{cpu_model()}, {os.cpu_count()} cores, {gpu}"


def machine_heading() -> str:
    """Short machine name for the RESULTS.md heading: the GPU, else 'CPU (N cores)'."""
    gpus = gpu_names()
    if gpus:
        return f"{len(gpus)}x {gpus[0]}" if len(gpus) > 1 else gpus[0]
    return f"CPU {os.cpu_count()} cores"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def command_line() -> str:
    """The exact command that ran this script."""
    executable = os.path.relpath(sys.executable)  # .venv/bin/python from the repository root
    if executable.startswith(".."):
        executable = sys.executable
    return " ".join(shlex.quote(a) for a in [executable, *sys.argv])


def append_results(title: str, table: str, notes: Sequence[str] = (), path: Path = RESULTS) -> None:
    """Append one ``## <machine> — <date>`` block to RESULTS.md.

    The block holds the benchmark's title, the machine, the exact command, the load
    average seen at the end of the run (other jobs sharing the machine skew numbers),
    the table and free-form notes.
    """
    now = datetime.datetime.now().astimezone()
    lines = [
        f"## {machine_heading()} — {now:%Y-%m-%d %H:%M %Z}",
        "",
        f"**{title}**",
        "",
        f"- machine: {machine()}",
        f"- command: `{command_line()}`",
        f"- load average (1/5/15 min) at the end: {load_average()}",
        *(f"- {note}" for note in notes),
        "",
        "```",
        table.rstrip(),
        "```",
        "",
    ]
    if not path.exists():
        path.write_text("# Benchmark results\n\nAppend-only; one block per run.\n\n")
    separator = "" if path.read_text().endswith("\n\n") else "\n"  # a blank line between blocks
    with open(path, "a") as handle:
        handle.write(separator + "\n".join(lines) + "\n")
    LOG.info("appended results to %s", path)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width text table; floats with 2 decimals."""

    def cell(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def read_frames(video: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` frames of ``video`` as (H, W, 3) uint8 RGB arrays (PyAV), as
    ``tddfa perf`` reads them; a video without frames ends the benchmark with its message."""
    from tddfa_clients.perf import PerfError
    from tddfa_clients.perf import read_frames as decode

    try:
        return decode(video, count)
    except PerfError as exc:
        raise SystemExit(str(exc)) from None


def first_frames_clip(video: Path, frames: int) -> Path:
    """A copy of the first ``frames`` frames of ``video`` (H.264, same rate), cached in
    build/bench/; the full video when ``frames`` is 0 or covers all of it."""
    import av

    if frames > 0:
        with av.open(str(video)) as source:
            if frames >= source.streams.video[0].frames > 0:
                frames = 0
    if frames <= 0:
        return video

    from tddfa.files import atomic_path

    out = WORK_DIR / f"{video.stem}_first{frames}.mp4"
    if out.is_file() and out.stat().st_mtime >= video.stat().st_mtime:
        return out
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    with (
        atomic_path(out) as temp,
        av.open(str(video)) as source,
        av.open(str(temp), "w") as sink,
    ):
        stream_in = source.streams.video[0]
        stream_out = sink.add_stream("libx264", rate=stream_in.average_rate)
        stream_out.width = stream_in.codec_context.width
        stream_out.height = stream_in.codec_context.height
        stream_out.pix_fmt = "yuv420p"
        written = 0
        for frame in source.decode(stream_in):
            frame.pts = None
            sink.mux(stream_out.encode(frame))
            written += 1
            if written >= frames:
                break
        sink.mux(stream_out.encode(None))
    return out


def repeated_clip(video: Path, times: int, out: Path) -> Path:
    """``video`` played ``times`` times in a row, its packets copied (no re-encoding, so a
    decoder does the same work per frame): a long clip where start-up weighs little."""
    import av

    from tddfa.files import atomic_path

    with av.open(str(video)) as source:
        stream = source.streams.video[0]
        packets = [p for p in source.demux(stream) if p.dts is not None]
        step = packets[1].pts - packets[0].pts if len(packets) > 1 else 1
        length = max(p.pts for p in packets) + step
        with atomic_path(out) as temp, av.open(str(temp), "w", format="mp4") as sink:
            copy = sink.add_stream_from_template(stream)
            for k in range(times):
                for packet in packets:
                    again = av.Packet(bytes(packet))
                    again.pts, again.dts = packet.pts + k * length, packet.dts + k * length
                    again.time_base, again.stream = packet.time_base, copy
                    again.is_keyframe = packet.is_keyframe
                    sink.mux(again)
    return out


@contextlib.contextmanager
def server_for(repository: Path, url: str | None, protocol: str = "grpc") -> Iterator[str]:
    """Yield ``host:port`` for ``protocol``: ``url`` as given, else a server started on
    ``repository`` for the duration (tools/serve/server.py's TritonServer)."""
    if url:
        yield url
        return
    from tddfa_tools.serve.server import TritonServer

    if not (repository / "tddfa" / "config.pbtxt").is_file():
        raise SystemExit(
            f"{repository} is not a tddfa model repository: run `tddfa build` or pass "
            "--repository / --url"
        )
    LOG.info("starting tritonserver on %s", repository)
    with TritonServer(repository, log_level=logging.DEBUG) as server:
        yield server.grpc_url if protocol == "grpc" else server.url


def base_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every benchmark shares: repository, video, results file, verbosity."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog="Results are printed and appended to benchmarks/RESULTS.md.",
    )
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--video", type=Path, default=default_video())
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        logging.getLogger("tritonserver").setLevel(logging.WARNING)
