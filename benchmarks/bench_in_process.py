"""Benchmark (b): the ensemble's steps in one process, no Triton (tddfa.pipeline.Pipeline).

Real frames of the sample video go through the same step objects and built files that
the server runs. Two measurements:

1. per-step median milliseconds of the ensemble's models, one frame batch at a time, the
   device synchronised after each step so each step's time is its own: ``--mode detect``
   (the ``tddfa`` ensemble: face_detector, face_aligner, face_renderer, face_vertices) or
   ``--mode track`` (``tddfa_track``: face_tracker, face_renderer, face_vertices; each row of
   a batch is one sequence, consecutive batches its next frames);
2. throughput in frames/s with ``--workers`` threads, each with its own Pipeline, no
   per-step synchronisation (the baseline for Triton's overhead, benchmark (a)).

With ``--perf-csv`` (perf_analyzer CSV files written by bench_perf_analyzer.py) it also
reports Triton's overhead = 1 - (a) / (b) at (a)'s best concurrency.

Example: .venv/bin/python benchmarks/bench_in_process.py --device cpu --frames 12
         .venv/bin/python benchmarks/bench_in_process.py --mode track --frames 4 --seconds 2
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import logging
import statistics
import sys
import threading
import time
from pathlib import Path

import _common

LOG = logging.getLogger("benchmarks.in_process")

# The ensemble of each mode (its steps, in order: tddfa.graph).
MODES = {"detect": "tddfa", "track": "tddfa_track"}
_SEQUENCES = itertools.count(1)


def synchronize(device: str) -> None:
    """Wait for queued GPU work (PyTorch and CuPy streams); no-op on the CPU."""
    if not device.startswith("cuda"):
        return
    with contextlib.suppress(ImportError):
        import torch

        torch.cuda.synchronize()
    with contextlib.suppress(ImportError):
        import cupy

        cupy.cuda.Device().synchronize()


def to_device(frames: list, device: str, batch: int) -> list:
    """Group frames into (B, H, W, 3) batches, on the GPU (CuPy) when device is CUDA."""
    import numpy as np

    batches = [np.stack(frames[i : i + batch]) for i in range(0, len(frames) - batch + 1, batch)]
    if not batches:
        raise SystemExit(f"--frames must be at least --batch ({batch})")
    if device.startswith("cuda"):
        try:
            import cupy
        except ImportError:
            LOG.warning("CuPy missing: frames stay in host memory, the host steps run on the CPU")
            return batches
        with cupy.cuda.Device(int(device.partition(":")[2] or 0)):
            return [cupy.asarray(b) for b in batches]
    return batches


class Sequences:
    """The sequence controls for ``--mode track``: row b of every batch is the next frame of
    sequence b (START on its first frame), as Triton's sequence batcher gives face_tracker."""

    def __init__(self, batch: int):
        import numpy as np

        self.ids = np.asarray([[next(_SEQUENCES)] for _ in range(batch)], np.uint64)
        self.started = False

    def controls(self, batch: int) -> dict:
        import numpy as np

        start = np.full((batch, 1), 0 if self.started else 1, np.int32)
        self.started = True
        return {
            "START": start,
            "END": np.zeros((batch, 1), np.int32),
            "READY": np.ones((batch, 1), np.int32),
            "CORRID": self.ids[:batch],
        }


def run_steps(
    pipeline,
    images,
    device: str,
    times: dict[str, list[float]] | None,
    mode: str = "detect",
    sequences: Sequences | None = None,
) -> dict:
    """The Pipeline's ensemble for ``mode`` (``MODES``); per-step seconds appended to
    ``times``. ``mode="track"`` needs ``sequences`` (one per batch row)."""
    t = {"IMAGE": images}
    if mode == "track":
        t.update(sequences.controls(len(images)))
    first = pipeline.steps()[steps_of(mode)[0]]
    first.validate(t)
    last = time.perf_counter()

    def timed(model: str) -> None:
        nonlocal last
        synchronize(device)
        now = time.perf_counter()
        times[model].append(now - last)
        last = now

    return pipeline.run_ensemble(MODES[mode], t, on_step=timed if times is not None else None)


def steps_of(mode: str) -> tuple[str, ...]:
    from tddfa.graph import ENSEMBLES

    return ENSEMBLES[MODES[mode]].steps


def step_times(pipeline, batches: list, device: str, repeats: int, mode: str) -> dict[str, float]:
    """Median ms per step over ``repeats`` passes of ``batches``."""
    times: dict[str, list[float]] = {name: [] for name in steps_of(mode)}
    sequences = Sequences(len(batches[0])) if mode == "track" else None
    for _ in range(repeats):
        for images in batches:
            run_steps(pipeline, images, device, times, mode, sequences)
    return {name: statistics.median(v) * 1e3 for name, v in times.items() if v}


def throughput(
    pipelines: list, batches: list, device: str, seconds: float, mode: str = "detect"
) -> tuple[float, int]:
    """frames/s with one thread per pipeline, each cycling over ``batches`` for ``seconds``
    (``mode="track"``: each thread's batch rows are its own sequences)."""
    counts = [0] * len(pipelines)
    barrier = threading.Barrier(len(pipelines) + 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait()
            i = index
            sequences = Sequences(len(batches[0])) if mode == "track" else None
            while not stop.is_set():
                images = batches[i % len(batches)]
                run_steps(pipelines[index], images, device, None, mode, sequences)
                synchronize(device)
                counts[index] += len(images)
                i += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pipelines))]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start  # includes the in-flight frames' completion
    if errors:
        raise errors[0]
    total = sum(counts)
    return total / elapsed, total


def best_triton_throughput(paths: list[Path]) -> tuple[float, str] | None:
    """Highest Inferences/Second over perf_analyzer CSV files, with its concurrency."""
    best = None
    for path in paths:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                value = float(row.get("Inferences/Second") or 0)
                if best is None or value > best[0]:
                    best = (value, f"{path.name} concurrency {row.get('Concurrency')}")
    return best


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.base_parser(__doc__)
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    parser.add_argument("--frames", type=int, default=32, help="distinct frames (default 32)")
    parser.add_argument("--batch", type=int, default=1, help="frames per call (default 1)")
    parser.add_argument(
        "--mode",
        choices=tuple(MODES),
        default="detect",
        help="detect: the tddfa ensemble's steps; track: tddfa_track's (default detect)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="passes over the frames for step times"
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="throughput window (default 20 s)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="worker threads (one Pipeline each); several values: one run each (default 1)",
    )
    parser.add_argument(
        "--perf-csv",
        type=Path,
        nargs="*",
        default=[],
        help="perf_analyzer CSVs of benchmark (a) to compute Triton's overhead",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _common.setup_logging(args.verbose)
    from tddfa.pipeline import Pipeline

    if args.device == "cpu":  # as the server's CPU instances
        from tddfa.cpu_threads import blas_on_one_thread

        blas_on_one_thread()

    frames = _common.read_frames(args.video, args.frames)
    batches = to_device(frames, args.device, args.batch)
    LOG.info(
        "%d batches of %d frames %s on %s", len(batches), args.batch, frames[0].shape, args.device
    )
    pipelines = [Pipeline(args.repository, args.device) for _ in range(max(args.workers))]
    try:
        for i in range(args.warmup):
            for pipeline in pipelines:
                pipeline(batches[i % len(batches)])
        synchronize(args.device)
        steps = step_times(pipelines[0], batches, args.device, args.repeats, args.mode)
        runs = []
        for workers in args.workers:
            fps, total = throughput(
                pipelines[:workers], batches, args.device, args.seconds, args.mode
            )
            LOG.info("%d worker(s): %.2f frames/s (%d frames)", workers, fps, total)
            runs.append((workers, fps, total))
    finally:
        for pipeline in pipelines:
            pipeline.close()

    step_table = _common.format_table(
        ["step", "median ms"],
        [*((k, v) for k, v in steps.items()), ("sum", sum(steps.values()))],
    )
    run_table = _common.format_table(
        ["workers", "batch", "frames/s", "frames"],
        [(w, args.batch, fps, n) for w, fps, n in runs],
    )
    notes = [
        f"repository: {args.repository} ({_build_summary(args.repository)})",
        f"mode {args.mode} ({', '.join(steps_of(args.mode))}); "
        f"device {args.device}; {len(frames)} distinct {frames[0].shape[1]}x{frames[0].shape[0]} "
        f"frames of {args.video.name}; step times: median over {args.repeats} pass(es), device "
        f"synchronised after each step; throughput: {args.seconds:.0f} s window",
    ]
    best_b = max(fps for _, fps, _ in runs)
    overhead = ""
    best_a = best_triton_throughput(args.perf_csv) if args.perf_csv else None
    if best_a is not None:
        overhead = (
            f"Triton overhead = 1 - (a)/(b) = 1 - {best_a[0]:.2f}/{best_b:.2f} = "
            f"{100 * (1 - best_a[0] / best_b):.1f} % ((a): {best_a[1]})"
        )
        notes.append(overhead)
    table = step_table + "\n\n" + run_table + (f"\n\n{overhead}" if overhead else "")
    sys.stdout.write(table + "\n")
    if not args.no_results:
        _common.append_results(f"(b) in-process pipeline ({args.mode}), no Triton", table, notes)
    return 0


def _build_summary(repository: Path) -> str:
    import json

    try:
        build = json.loads((repository / "BUILD.json").read_text())
    except (OSError, ValueError):
        return "no BUILD.json"
    keys = ("flavour", "networks", "device", "regressor", "bfm", "max_faces", "max_batch_size")
    return ", ".join(f"{k}={build[k]}" for k in keys if k in build)


if __name__ == "__main__":
    sys.exit(main())
