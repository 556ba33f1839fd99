"""CPU ms per frame of every kind of process around any client command.

Runs ``COMMAND`` (for instance an older release's video benchmark) and reads, over its run,
the CPU time of the command and every process it waited for (the clients: getrusage of the
children), of the server answering ``--url`` (tritonserver, each model's stubs, the
supervisor, CUDA MPS; /proc), the machine's busy cores and the GPU's busy share; divides by
``--frames`` (the frames the command sends). Prints the table (and appends it to RESULTS.md
unless ``--no-results``).

  python3 benchmarks/cpu_probe.py --url localhost:8001 --frames 4800 -- \\
      python3 benchmarks/bench_video.py --url localhost:8001 --copies 16 --no-results
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import _common
from _cpu_usage import CpuWindow, GpuBusy, listening_pid, per_frame_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="HOST:PORT of the server the command uses")
    parser.add_argument("--frames", type=int, required=True, help="frames the command sends")
    parser.add_argument("--title", default="CPU per frame around a client command")
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    server = listening_pid(int(args.url.rsplit(":", 1)[1]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with GpuBusy() as gpu:
        window = CpuWindow(None if server is None else [server]).start()
        start = time.perf_counter()
        status = subprocess.call(command)
        seconds = time.perf_counter() - start
        groups = window.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    clients = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    rows = per_frame_rows(groups, clients, args.frames)
    table = _common.format_table(["process kind", "CPU ms/frame"], rows)
    summary = (
        f"{args.frames} frames in {seconds:.1f} s (command included start-up: "
        f"{args.frames / seconds:.1f} frames/s); cores busy {groups['cores busy']:.1f}; GPU busy "
        + ("-" if gpu.percent is None else f"{gpu.percent:.0f} %")
    )
    sys.stdout.write(table + "\n" + summary + "\n")
    if not args.no_results:
        _common.append_results(args.title, table, [f"command: `{' '.join(command)}`", summary])
    return status


if __name__ == "__main__":
    sys.exit(main())
