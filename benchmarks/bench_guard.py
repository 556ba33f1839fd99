"""Benchmark: what the guard costs per frame (`tddfa serve --host 0.0.0.0` puts it in front).

Sends the same real frames (the sample video, 1280x720) to the `tddfa` ensemble directly and
through `tddfa guard` (its own process, as in front of a server), over gRPC and HTTP, asking
for what the video client asks for (RENDERED, FACE_COUNT; no shared memory: the guard does
not pass it). Reports per protocol and path: latency at one request in flight (p50, p90),
frames/s with ``--in-flight`` requests in flight, and the guard process's CPU time per frame
(user + system, from /proc). The difference of the p50s is the latency the guard adds.

Example: .venv/bin/python benchmarks/bench_guard.py --frames 16 --requests 60
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import _common

from tddfa.contract import STATELESS_ENSEMBLE

LOG = logging.getLogger("benchmarks.guard")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def guard_process(http_upstream: str, grpc_upstream: str) -> Iterator[tuple[int, str, str]]:
    """`tddfa guard` on free loopback ports: (pid, http url, grpc url)."""
    http, grpc = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tddfa_tools.cli", "guard", "--host", "127.0.0.1",
         "--http-port", str(http), "--grpc-port", str(grpc),
         "--upstream-http", http_upstream, "--upstream-grpc", grpc_upstream],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/live", timeout=1)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("tddfa guard did not start") from None
                time.sleep(0.2)
        yield process.pid, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure(url: str, protocol: str, frames: list, requests: int, in_flight: int) -> dict:
    """Latency at one in flight and frames/s at ``in_flight`` for ``requests`` frames."""
    from tddfa_clients.triton_client import FrameClient

    with FrameClient(
        url,
        protocol,
        model=STATELESS_ENSEMBLE,
        outputs=("RENDERED", "FACE_COUNT"),
        in_flight=in_flight,
        shared_memory="none",
    ) as client:
        for frame in frames[:4]:  # warm-up: connections, first batches
            client.infer(frame)
        latencies = []
        for i in range(requests):
            start = time.perf_counter()
            client.infer(frames[i % len(frames)])
            latencies.append((time.perf_counter() - start) * 1000)
        items = ((i, frames[i % len(frames)]) for i in range(requests))
        start = time.perf_counter()
        done = sum(1 for _ in client.infer_stream(items, in_flight))
        fps = done / (time.perf_counter() - start)
    latencies.sort()
    return {
        "p50": statistics.median(latencies),
        "p90": latencies[int(0.9 * (len(latencies) - 1))],
        "fps": fps,
    }


def main() -> int:
    parser = _common.base_parser(__doc__)
    parser.add_argument("--frames", type=int, default=16, help="distinct frames (default 16)")
    parser.add_argument("--requests", type=int, default=60, help="frames per measurement")
    parser.add_argument("--in-flight", type=int, default=4, help="for frames/s (default 4)")
    args = parser.parse_args()
    _common.setup_logging(args.verbose)
    frames = _common.read_frames(args.video, args.frames)
    from tddfa_tools.serve.server import TritonServer

    rows, cpu = [], {}
    with (
        TritonServer(args.repository, log_level=logging.DEBUG) as server,
        guard_process(server.url, server.grpc_url) as (pid, http_guard, grpc_guard),
    ):
        for protocol, direct, guarded in (
            ("grpc", server.grpc_url, grpc_guard),
            ("http", server.url, http_guard),
        ):
            for path, url in (("direct", direct), ("guard", guarded)):
                before = cpu_seconds(pid)
                result = measure(url, protocol, frames, args.requests, args.in_flight)
                frames_sent = 4 + 2 * args.requests
                guard_ms = (cpu_seconds(pid) - before) * 1000 / frames_sent
                cpu[(protocol, path)] = guard_ms
                rows.append((protocol, path, result["p50"], result["p90"], result["fps"], guard_ms))
                LOG.info("%s %s: %s", protocol, path, result)
    header = ("protocol", "path", "p50 ms", "p90 ms", "frames/s", "guard CPU ms/frame")
    table = _common.format_table(header, rows)
    added = {
        protocol: next(r[2] for r in rows if r[:2] == (protocol, "guard"))
        - next(r[2] for r in rows if r[:2] == (protocol, "direct"))
        for protocol in ("grpc", "http")
    }
    notes = [
        f"frames: {len(frames)} of {args.video.name} ({frames[0].shape[1]}x{frames[0].shape[0]}), "
        f"{args.requests} per measurement, frames/s at {args.in_flight} in flight; outputs "
        "RENDERED, FACE_COUNT; no shared memory",
        "latency the guard adds at p50: "
        + ", ".join(f"{p} {ms:+.2f} ms" for p, ms in added.items()),
        f"repository: {args.repository}",
    ]
    print(table)  # noqa: T201
    for note in notes:
        print(note)  # noqa: T201
    if not args.no_results:
        _common.append_results("guard cost per frame (tddfa guard in front of tddfa)", table, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
