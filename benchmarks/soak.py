"""Soak: a bounded run at a fixed concurrency with real frames, watching memory and errors.

``--concurrency`` workers each keep one request in flight for ``--duration`` seconds, with
distinct frames of the sample video (emma720.mp4, decoded by the project's video reader).
When the server serves the sequence ensemble ``tddfa_track`` (read from its model index),
half the workers send Triton sequences to it (one sequence per pass over the frames,
start/end flags set), the others stateless frames to ``tddfa``. Every ``--interval`` s a
sample records frames, errors, frames/s and the resident memory of tritonserver and of
every Python-backend stub (by model). At the end: a CSV of the samples, and a block in
benchmarks/RESULTS.md with the machine, command, throughput, errors and each process
group's RSS growth after warm-up (``--warmup`` seconds and ``--warmup-passes`` passes over
the frames; the issue's bar: < 5 % and zero errors).

Starts its own server on ``--repository`` unless given ``--url`` (then ``--server-pid``
names the tritonserver whose memory to watch, when it runs on this host).

Quick check (2 minutes, concurrency 2, CPU build):
    .venv/bin/python -m tddfa_tools.cli build
    .venv/bin/python benchmarks/soak.py --short
Full soak (the issue's runs):
    .venv/bin/python benchmarks/soak.py --duration 1800 --concurrency 4
    .venv/bin/python benchmarks/soak.py --duration 600 --concurrency 32 --cuda-mps \
        --cuda-memory-pool-mb 4096      # H200, GPU build (README "On the GPU")
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import _common
import _soak
import numpy as np

from tddfa.contract import IMAGE_INPUT, SEQUENCE_ENSEMBLE, STATELESS_ENSEMBLE

LOG = logging.getLogger("benchmarks.soak")
OUTPUTS = ("RENDERED", "FACE_COUNT")
SHORT = {"duration": 120.0, "concurrency": 2, "interval": 5.0, "warmup": 30.0}
FULL = {"duration": 1800.0, "concurrency": 4, "interval": 10.0, "warmup": 120.0}


class Counters:
    """Successes and failures over all workers (thread-safe), the first errors kept."""

    def __init__(self) -> None:
        self.frames = self.errors = 0
        self.first_errors: list[str] = []
        self._lock = threading.Lock()

    def success(self) -> None:
        with self._lock:
            self.frames += 1

    def failure(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            if len(self.first_errors) < 5:
                self.first_errors.append(f"{type(exc).__name__}: {exc}"[:300])

    def read(self) -> tuple[int, int]:
        with self._lock:
            return self.frames, self.errors


def served_models(url: str) -> set[str]:
    """The ensembles the server has ready (the readiness API needs no admin token, unlike
    the repository index)."""
    import tritonclient.grpc as grpcclient

    from tddfa.contract import SEQUENCE_ENSEMBLE, STATELESS_ENSEMBLE

    with grpcclient.InferenceServerClient(url) as client:
        return {m for m in (STATELESS_ENSEMBLE, SEQUENCE_ENSEMBLE) if client.is_model_ready(m)}


def stateless_worker(
    url: str, frames: list[np.ndarray], stop: threading.Event, counters: Counters
) -> None:
    """One request in flight to ``tddfa`` until ``stop``; a failure is counted, not fatal."""
    from tddfa_clients.triton_client import ClientError, FrameClient

    index = 0
    client = None
    while not stop.is_set():
        try:
            if client is None:
                client = FrameClient(url, "grpc", model=STATELESS_ENSEMBLE, outputs=OUTPUTS)
            client.infer(frames[index % len(frames)])
            counters.success()
        except ClientError as exc:
            counters.failure(exc)
            stop.wait(0.5)  # a server in trouble: do not spin
        index += 1
    if client is not None:
        client.close()


def sequence_worker(
    url: str, frames: list[np.ndarray], stop: threading.Event, counters: Counters, first_id: int
) -> None:
    """Triton sequences to ``tddfa_track``: one per pass over ``frames``, frames in order,
    sequence_start on the first and sequence_end on the last (or on the frame sent when
    ``stop`` is set, so the server releases the sequence's state)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        config = client.get_model_config(SEQUENCE_ENSEMBLE, as_json=True)["config"]
        batch = (1,) if int(config.get("max_batch_size", 0) or 0) > 0 else ()
        outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
        sequence_id = first_id
        while not stop.is_set():
            for position, frame in enumerate(frames):
                last = position == len(frames) - 1 or stop.is_set()
                tensor = grpcclient.InferInput(IMAGE_INPUT, [*batch, *frame.shape], "UINT8")
                tensor.set_data_from_numpy(frame.reshape(*batch, *frame.shape))
                try:
                    client.infer(
                        SEQUENCE_ENSEMBLE,
                        [tensor],
                        outputs=outputs,
                        sequence_id=sequence_id,
                        sequence_start=position == 0,
                        sequence_end=last,
                        client_timeout=120.0,
                    )
                    counters.success()
                except Exception as exc:  # noqa: BLE001  (counted; the soak goes on)
                    counters.failure(exc)
                    stop.wait(0.5)
                    break  # a new sequence: the server may have dropped this one
                if last:
                    break
            sequence_id += 1


@contextlib.contextmanager
def serving(args) -> Iterator[tuple[str, int | None]]:
    """(gRPC url, tritonserver pid): the given server, or one started for the run."""
    if args.url:
        yield args.url, args.server_pid
        return
    from tddfa_tools.serve.server import TritonServer

    if not (args.repository / STATELESS_ENSEMBLE / "config.pbtxt").is_file():
        raise SystemExit(
            f"{args.repository} is not a tddfa model repository: run "
            "`.venv/bin/python -m tddfa_tools.cli build` or pass --repository / --url"
        )
    from tddfa_tools.serve.cuda_mps import cuda_memory_pool_args

    server = TritonServer(
        args.repository,
        log_level=logging.DEBUG,
        cuda_mps=args.cuda_mps,
        extra_args=cuda_memory_pool_args(args.cuda_memory_pool_mb),
    )
    with server:
        yield server.grpc_url, server.pid


def run_soak(args) -> tuple[list[_soak.Sample], Counters, dict]:
    frames = _common.read_frames(args.video, args.frames)
    LOG.info("%d frames of %s (%dx%d)", len(frames), args.video, *frames[0].shape[1::-1])
    counters = Counters()
    samples: list[_soak.Sample] = []
    with serving(args) as (url, pid):
        models = served_models(url)
        sequences = SEQUENCE_ENSEMBLE in models and args.sequences != "off"
        n_sequence = (args.concurrency + 1) // 2 if sequences else 0
        table = _soak.ProcessTable(pid) if pid else None
        if table is None:
            LOG.warning("no tritonserver pid (--server-pid): memory is not sampled")
        stop = threading.Event()
        workers = [
            threading.Thread(
                target=sequence_worker, args=(url, frames, stop, counters, 1 + i * 1_000_000)
            )
            for i in range(n_sequence)
        ] + [
            threading.Thread(target=stateless_worker, args=(url, frames, stop, counters))
            for _ in range(args.concurrency - n_sequence)
        ]
        LOG.info(
            "%s: %d stateless + %d sequence worker(s) for %.0f s, a sample every %.0f s",
            url,
            len(workers) - n_sequence,
            n_sequence,
            args.duration,
            args.interval,
        )
        start = time.monotonic()
        for worker in workers:
            worker.start()
        try:
            while True:
                elapsed = time.monotonic() - start
                frames_done, errors = counters.read()
                rss = table.rss_mb() if table else {}
                previous = samples[-1] if samples else None
                samples.append(_soak.next_sample(previous, elapsed, frames_done, errors, rss))
                LOG.info(
                    "%6.0f s  %6d frames  %3d errors  %6.2f frames/s  RSS %.0f MB",
                    elapsed,
                    frames_done,
                    errors,
                    samples[-1].frames_per_s,
                    samples[-1].total_mb,
                )
                if elapsed >= args.duration:
                    break
                time.sleep(min(args.interval, max(args.duration - elapsed, 0.0)))
        finally:
            stop.set()
            for worker in workers:
                worker.join()
    info = {"url": url, "sequences": n_sequence, "models": sorted(models), "frames": len(frames)}
    return samples, counters, info


def report(args, samples, counters: Counters, info: dict) -> _soak.Analysis:
    analysis = _soak.analyse(samples, args.warmup, args.warmup_passes * info["frames"])
    _soak.write_csv(args.csv, samples)
    header, rows = _soak.growth_table(analysis)
    table = _common.format_table(header, rows) if rows else "(no sample after warm-up)"
    print(table)
    print(analysis.verdict)
    notes = [
        f"{'short check' if args.short else 'soak'}: {args.duration:.0f} s at concurrency "
        f"{args.concurrency} ({info['sequences']} sending sequences to {SEQUENCE_ENSEMBLE}), "
        f"{info['frames']} distinct frames of {args.video.name}, gRPC, a sample every "
        f"{args.interval:.0f} s, warm-up {args.warmup:.0f} s and {args.warmup_passes} "
        "passes over the frames",
        f"served models: {', '.join(info['models'])}",
        f"frames: {analysis.frames}, errors: {analysis.errors}; after warm-up "
        f"{analysis.frames_per_s:.2f} frames/s (slowest interval {analysis.min_frames_per_s:.2f})",
        f"verdict: {analysis.verdict}",
        f"CSV: {args.csv}",
    ]
    if counters.first_errors:
        notes.append("first errors: " + " | ".join(counters.first_errors))
    if not args.no_results:
        _common.append_results("Soak: throughput, errors and RSS over time", table, notes)
    return analysis


def main() -> int:
    parser = _common.base_parser(__doc__)
    parser.add_argument("--url", help="gRPC HOST:PORT of a running server (default: start one)")
    parser.add_argument("--server-pid", type=int, help="with --url: the tritonserver to watch")
    parser.add_argument(
        "--cuda-mps", action="store_true", help="the started server runs under CUDA MPS (GPU)"
    )
    parser.add_argument(
        "--cuda-memory-pool-mb", type=int, help="the started server's CUDA pool per GPU (GPU)"
    )
    parser.add_argument("--short", action="store_true", help=f"quick check: {SHORT}")
    parser.add_argument("--duration", type=float, help=f"seconds (default {FULL['duration']:.0f})")
    parser.add_argument("--concurrency", type=int, help="requests in flight (default 4)")
    parser.add_argument("--interval", type=float, help="seconds between samples (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds before the RSS baseline (120)")
    parser.add_argument("--frames", type=int, default=32, help="distinct frames (default 32)")
    parser.add_argument(
        "--warmup-passes",
        type=int,
        default=2,
        help="passes over the frames before the RSS baseline, besides --warmup (default 2)",
    )
    parser.add_argument(
        "--sequences",
        choices=("auto", "off"),
        default="auto",
        help=f"auto: half the workers send sequences to {SEQUENCE_ENSEMBLE} when it is served",
    )
    parser.add_argument("--csv", type=Path, help="samples CSV (default build/bench/soak-*.csv)")
    args = parser.parse_args()
    for name, value in (SHORT if args.short else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.concurrency < 1 or args.duration <= 0 or args.interval <= 0:
        parser.error("--concurrency, --duration and --interval must be positive")
    args.csv = args.csv or _common.WORK_DIR / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    _common.setup_logging(args.verbose)
    samples, counters, info = run_soak(args)
    analysis = report(args, samples, counters, info)
    return 0 if analysis.flat and analysis.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
