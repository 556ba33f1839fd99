"""(j) CPU milliseconds per frame of each served process, detected and tracked frames.

Decoded frames of the sample video go through a real tritonserver (FrameClient over gRPC,
system shared memory when the server is local, RENDERED and FACE_COUNT asked for, as
``tddfa video`` does), ``--mode detect`` to ``tddfa`` and ``--mode track`` to
``tddfa_track`` as one sequence, one frame in flight by default so that the figures are
work, not queueing. Per round and mode: frames/s and the CPU time (utime + stime from
/proc, every thread) of the client, tritonserver and each model's stubs, divided by the
frames. Modes alternate within a round; the table gives each figure's median over the
rounds, so a burst of load from elsewhere on a shared box moves one round, not the result.

``--py-spy DIR`` samples the stubs of one extra round per mode with py-spy (``pip install
py-spy``; native frames included, idle threads left out) and writes each stub's collapsed
stacks (``<mode>_<model>_<pid>.txt``: flamegraph.pl or speedscope draw them): where a
stub's CPU goes, the Python backend's own work included.

Example: .venv/bin/python benchmarks/bench_served_cpu.py --frames 200 --rounds 3
"""

from __future__ import annotations

import logging
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    append_results,
    base_parser,
    format_table,
    load_average,
    read_frames,
    server_for,
    setup_logging,
)
from _cpu_usage import CpuWindow, listening_pid, server_groups  # noqa: E402

LOG = logging.getLogger("benchmarks.served_cpu")
WARMUP = 10
# CpuWindow's groups that are not the server's: the machine's busy cores, and the process
# that started tritonserver (this benchmark when it started the server, counted as client)
IGNORED_GROUPS = ("cores busy", "supervisor")


def one_round(url: str, frames: list, mode: str, in_flight: int, window: CpuWindow) -> dict:
    """frames/s and {process: CPU ms per frame} of one pass of ``frames`` (after WARMUP)."""
    from tddfa_clients.triton_client import FrameClient, new_sequence_id
    from tddfa_clients.video import model_for

    outputs = ("RENDERED", "FACE_COUNT")
    with FrameClient(url, "grpc", model=model_for(mode), outputs=outputs, in_flight=in_flight) as c:

        def send(batch: list) -> int:
            sequence = {"sequence_id": new_sequence_id()} if mode == "track" else {}
            return sum(1 for _ in c.infer_stream(enumerate(batch), **sequence))

        send(frames[:WARMUP])
        window.start()
        client, start = time.process_time(), time.perf_counter()
        done = send(frames[WARMUP:])
        elapsed = time.perf_counter() - start
        client = time.process_time() - client
        seconds = window.stop()
    cpu = {"client": client}
    # "supervisor" is the process that started tritonserver: this one when it started it
    cpu.update({k.removeprefix("stub:"): v for k, v in seconds.items() if k not in IGNORED_GROUPS})
    result = {name: 1e3 * value / done for name, value in cpu.items()}
    result["frames/s"] = done / elapsed
    return result


def py_spy(url: str, frames: list, mode: str, in_flight: int, server: int, out: Path) -> None:
    """One round of ``mode`` with py-spy recording every stub of the server (flame graphs)."""
    executable = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(executable).exists():
        raise SystemExit("--py-spy needs py-spy: pip install py-spy")
    out.mkdir(parents=True, exist_ok=True)
    groups = {k: v for k, v in server_groups(servers=[server]).items() if k.startswith("stub:")}
    recorders = []
    for label, pids in groups.items():
        for pid in pids:
            stacks = out / f"{mode}_{label.removeprefix('stub:')}_{pid}.txt"
            command = [executable, "record", "--pid", str(pid), "--native", "--format", "raw",
                       "--rate", "250", "--output", str(stacks)]  # fmt: skip
            recorders.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
    time.sleep(1.0)  # attached
    try:
        one_round(url, frames, mode, in_flight, CpuWindow([server]))
    finally:
        for recorder in recorders:
            recorder.send_signal(2)  # SIGINT: py-spy writes its output and exits
        for recorder in recorders:
            recorder.wait(timeout=60)
    LOG.info("py-spy flame graphs of %s in %s", mode, out)


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--frames", type=int, default=200, help="timed frames a round (200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, modes alternating (3)")
    parser.add_argument(
        "--modes", nargs="+", choices=("detect", "track"), default=["track", "detect"]
    )
    parser.add_argument("--in-flight", type=int, default=1, help="requests in flight (1)")
    parser.add_argument("--url", help="a running server's gRPC host:port (default: start one)")
    parser.add_argument("--py-spy", type=Path, help="write py-spy flame graphs of the stubs here")
    args = parser.parse_args()
    setup_logging(args.verbose)
    frames = read_frames(args.video, args.frames + WARMUP)
    load_before = load_average()
    runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    with server_for(args.repository, args.url) as url:
        server = listening_pid(int(url.rpartition(":")[2]))
        if server is None:
            raise SystemExit(f"no process listens on {url}: a server on this host is needed")
        window = CpuWindow([server])
        for r in range(args.rounds):
            for mode in args.modes:
                runs[mode].append(one_round(url, frames, mode, args.in_flight, window))
                LOG.info("round %d %s: %s", r + 1, mode, runs[mode][-1])
        if args.py_spy:
            for mode in args.modes:
                py_spy(url, frames, mode, args.in_flight, server, args.py_spy)
    processes = sorted(
        {k for rs in runs.values() for r in rs for k in r} - {"frames/s", "client", "tritonserver"}
    )
    columns = ["frames/s", "client", "tritonserver", *processes]
    rows = []
    for mode, rs in runs.items():
        median = {c: statistics.median(r.get(c, 0.0) for r in rs) for c in columns}
        server_ms = sum(median[c] for c in ("tritonserver", *processes))
        rows.append([mode, *(median[c] for c in columns), server_ms, server_ms + median["client"]])
    table = format_table(["mode", *columns, "server", "total"], rows)
    table = "CPU ms per frame (median of the rounds):\n\n" + table
    print(table)
    if not args.no_results:
        append_results(
            "(j) served CPU per frame, per process",
            table,
            [
                f"{args.frames} frames of {args.video.name} after {WARMUP} warm-up, decoded "
                f"beforehand, FrameClient gRPC, {args.in_flight} in flight, RENDERED + FACE_COUNT; "
                f"{args.rounds} rounds, modes alternating ({', '.join(args.modes)})",
                "CPU: utime + stime of each process (all threads) from /proc over the round / "
                "frames; server = tritonserver + every stub",
                f"repository: {args.repository}; load before the run: {load_before}",
            ],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
