"""Benchmark (d): per-step times from Triton's statistics endpoint (v2/models/stats).

Reads every model's statistics, runs a load (real frames of the sample video through
FrameClient with ``--concurrency`` requests in flight), reads them again and reports, per
model, the difference: requests, executions (so the average batch), and the average
queue / compute_input / compute_infer / compute_output milliseconds per request. A build that
serves the networks as models (onnxruntime, tensorrt, ``--networks models``) also lists them:
their requests come from the steps' BLS calls.

Example: .venv/bin/python benchmarks/bench_step_stats.py --frames 8 --requests 40
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import _common

from tddfa.contract import SEQUENCE_ENSEMBLE
from tddfa.contract import STATELESS_ENSEMBLE as ENSEMBLE

LOG = logging.getLogger("benchmarks.step_stats")

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def read_stats(url: str) -> dict[str, dict]:
    """{model name: {"requests", "executions", "inferences", phase: ns}} from gRPC stats."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(as_json=True)  # int64 arrive as strings
    finally:
        client.close()
    models = {}
    for entry in stats.get("model_stats", []):
        inference = entry.get("inference_stats", {})
        record = {
            "requests": int(inference.get("success", {}).get("count", 0)),
            "failures": int(inference.get("fail", {}).get("count", 0)),
            "request_ns": int(inference.get("success", {}).get("ns", 0)),
            "executions": int(entry.get("execution_count", 0)),
            "inferences": int(entry.get("inference_count", 0)),
        }
        for phase in PHASES:
            record[phase] = int(inference.get(phase, {}).get("ns", 0))
        models[entry["name"]] = record
    return models


def difference(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    return {
        name: {key: value - before.get(name, {}).get(key, 0) for key, value in record.items()}
        for name, record in after.items()
    }


def run_load(url: str, frames: list, requests: int, concurrency: int) -> float:
    """Send ``requests`` frames (cycling) with ``concurrency`` in flight; returns seconds."""
    from tddfa_clients.triton_client import FrameClient

    with FrameClient(url, "grpc", in_flight=concurrency, shared_memory="auto") as client:
        items = ((i, frames[i % len(frames)]) for i in range(requests))
        start = time.perf_counter()
        for _ in client.infer_stream(items):
            pass
        return time.perf_counter() - start


def table_rows(delta: dict[str, dict]) -> list[list]:
    # the ensembles' models in their order; face_regressor is there when served (BLS)
    order = ["face_detector", "face_aligner", "face_tracker", "face_regressor",
             "face_renderer", "face_vertices", ENSEMBLE, SEQUENCE_ENSEMBLE]  # fmt: skip
    names = [n for n in order if n in delta] + sorted(set(delta) - set(order))
    rows = []
    for name in names:
        d = delta[name]
        if d["requests"] <= 0:
            continue
        per = 1e-6 / d["requests"]  # ns -> ms per request
        batch = d["inferences"] / d["executions"] if d["executions"] else float("nan")
        rows.append(
            [
                name,
                d["requests"],
                d["executions"],
                batch,
                *(d[phase] * per for phase in PHASES),
                d["request_ns"] * per,
            ]
        )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.base_parser(__doc__)
    parser.add_argument("--url", help="gRPC HOST:PORT of a running server (default: start one)")
    parser.add_argument("--frames", type=int, default=16, help="distinct frames (default 16)")
    parser.add_argument("--requests", type=int, default=200, help="frames sent (default 200)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _common.setup_logging(args.verbose)
    frames = _common.read_frames(args.video, args.frames)
    with _common.server_for(args.repository, args.url, "grpc") as url:
        run_load(url, frames, min(len(frames), args.concurrency) * 2, args.concurrency)  # warm-up
        before = read_stats(url)
        seconds = run_load(url, frames, args.requests, args.concurrency)
        after = read_stats(url)
    delta = difference(before, after)
    header = ["model", "requests", "executions", "avg batch"]
    header += [f"{p} ms" for p in PHASES] + ["request ms"]
    table = _common.format_table(header, table_rows(delta))
    fps = args.requests / seconds
    summary = f"load: {args.requests} frames in {seconds:.1f} s = {fps:.2f} frames/s, {args.concurrency} in flight"
    failures = sum(d["failures"] for d in delta.values())
    sys.stdout.write(table + "\n" + summary + "\n")
    if failures:
        LOG.warning("%d failed requests during the load", failures)
    if not args.no_results:
        notes = [
            f"server: {args.url or args.repository}; client: FrameClient over gRPC, shared "
            f"memory auto, {args.frames} distinct {frames[0].shape[1]}x{frames[0].shape[0]} "
            f"frames of {args.video.name}",
            "times: Triton statistics difference before/after the load, averaged per request "
            "(a batched execution's compute time is counted for each request in it); "
            "'request ms' is the success duration (whole request inside the server)",
            summary,
        ]
        if failures:
            notes.append(f"{failures} failed requests")
        _common.append_results("(d) per-step times from Triton's statistics", table, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
