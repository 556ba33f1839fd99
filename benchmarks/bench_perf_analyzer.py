"""Benchmark (a): perf_analyzer on the ``tddfa`` ensemble with real 720p frames.

Writes frames of the sample video as perf_analyzer ``--input-data`` (tddfa_clients.perf),
starts a server on ``--repository`` (or uses ``--url``), and runs perf_analyzer over gRPC
once per concurrency with ``--shared-memory none|system|cuda``; parses its CSV and reports
throughput and p50/p90/p99 latency, plus perf_analyzer's server-side split (queue,
compute input/infer/output, averaged per request).

Examples:
  .venv/bin/python benchmarks/bench_perf_analyzer.py                      # CPU: 1,2,4
  .venv/bin/python benchmarks/bench_perf_analyzer.py --shared-memory cuda # GPU: 1..64
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import _common

from tddfa_clients import perf

LOG = logging.getLogger("benchmarks.perf_analyzer")

GPU_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
CPU_CONCURRENCY = (1, 2, 4)
SERVER_SPLIT = (
    ("Server Queue", "queue"),
    ("Server Compute Input", "c_in"),
    ("Server Compute Infer", "c_infer"),
    ("Server Compute Output", "c_out"),
)


def run_one(
    binary: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    url: str,
    data: Path,
    shape: tuple[int, ...],
    concurrency: int,
    csv_dir: Path,
) -> dict[str, str]:
    """One perf_analyzer run at ``concurrency``; returns its CSV row."""
    csv_path = csv_dir / f"perf-{args.shared_memory}-c{concurrency}.csv"
    command = perf.perf_command(
        binary,
        url,
        "grpc",
        f"{concurrency}:{concurrency}",
        data,
        csv_path,
        shape,
        args.shared_memory,
        args.measurement_interval,
    )
    LOG.info("concurrency %d: %s", concurrency, " ".join(command))
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        tail = "\n".join((completed.stdout + completed.stderr).strip().splitlines()[-20:])
        raise SystemExit(f"perf_analyzer failed at concurrency {concurrency}:\n{tail}")
    rows = perf.read_csv(csv_path)
    if not rows:
        raise SystemExit(f"perf_analyzer wrote no rows to {csv_path}")
    return rows[-1]


def ms(row: dict[str, str], key: str) -> float:
    """A perf_analyzer CSV latency (microseconds) in milliseconds."""
    value = row.get(key)
    return float(value) / 1000 if value not in (None, "") else float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.base_parser(__doc__)
    parser.add_argument("--url", help="gRPC HOST:PORT of a running server (default: start one)")
    parser.add_argument("--frames", type=int, default=16, help="distinct frames (default 16)")
    parser.add_argument(
        "--shared-memory", choices=("none", "system", "cuda"), default="none",
        help="how perf_analyzer passes tensors (default none)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=int, nargs="+",
        help=f"concurrency values (default {GPU_CONCURRENCY} with a GPU, {CPU_CONCURRENCY} without)",
    )  # fmt: skip
    parser.add_argument(
        "--measurement-interval", type=int, default=None, metavar="MS",
        help="perf_analyzer time window (default 8000 on CPU, 5000 with a GPU)",
    )  # fmt: skip
    parser.add_argument("--csv-dir", type=Path, help="keep perf_analyzer's CSV files here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _common.setup_logging(args.verbose)
    gpu = _common.has_cuda()
    concurrency = args.concurrency or (GPU_CONCURRENCY if gpu else CPU_CONCURRENCY)
    if args.measurement_interval is None:
        args.measurement_interval = 5000 if gpu else 8000
    try:
        binary = perf.find_perf_analyzer()
        env = perf.perf_environment()
    except perf.PerfError as exc:
        LOG.error("%s", exc)
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        csv_dir = args.csv_dir or Path(tmp)
        csv_dir.mkdir(parents=True, exist_ok=True)
        data = Path(tmp) / "input_data.json"
        shape = perf.write_input_data(args.video, args.frames, data)
        LOG.info("input data: %d frames %s of %s", args.frames, shape, args.video.name)
        with _common.server_for(args.repository, args.url, "grpc") as url:
            for c in concurrency:
                rows.append((c, run_one(binary, env, args, url, data, shape, c, csv_dir)))
    header = ["conc", "infer/s", "p50 ms", "p90 ms", "p99 ms"]
    header += [f"{short} ms" for _, short in SERVER_SPLIT]
    table_rows = []
    for c, row in rows:
        table_rows.append(
            [
                c,
                float(row.get("Inferences/Second") or 0),
                ms(row, "p50 latency"),
                ms(row, "p90 latency"),
                ms(row, "p99 latency"),
                *(ms(row, key) for key, _ in SERVER_SPLIT),
            ]
        )
    table = _common.format_table(header, table_rows)
    best = max(table_rows, key=lambda r: r[1])
    summary = f"best: {best[1]:.2f} infer/s at concurrency {best[0]}; p50 at concurrency {table_rows[0][0]}: {table_rows[0][2]:.2f} ms"
    sys.stdout.write(table + "\n" + summary + "\n")
    if not args.no_results:
        notes = [
            f"repository: {args.repository if not args.url else args.url}",
            f"gRPC, --shared-memory {args.shared_memory}, {args.frames} distinct "
            f"{shape[1]}x{shape[0]} frames of {args.video.name}, batch 1 per request, "
            f"time windows of {args.measurement_interval} ms (up to 5 trials, 25 % stability)",
            "server split columns: perf_analyzer's per-request averages for the ensemble "
            "(queue/compute summed over its steps)",
            summary,
        ]
        if args.csv_dir:
            notes.append(f"CSV files: {args.csv_dir}")
        _common.append_results(
            f"(a) perf_analyzer, gRPC, shared memory {args.shared_memory}", table, notes
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
