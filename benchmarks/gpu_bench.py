"""GPU benchmarks (a)-(d) (benchmarks/README.md) in one command, for a machine with CUDA but no PyAV.

(a) perf_analyzer on the ensemble, gRPC + CUDA shared memory, real 720p frames, a
    concurrency sweep (each run bounded by --perf-timeout: a run whose requests do not come
    back is reported with a hang dump instead of waiting forever); (b) the same steps in-process (tddfa.pipeline on CuPy frames, no
    Triton); (c) N parallel copies of the sample video: decode (OpenCV/FFmpeg on the CPU)
    -> CuPy -> CUDA shared memory -> server -> rendered frame left in CUDA shared memory
    (no encoder: the H100 has no NVENC); (d) per-step times from Triton's statistics
    (v2/models/stats) around one perf_analyzer run.

Frames are decoded with OpenCV (the device image has it; PyAV is not there). The CUDA
shared memory regions are cudaMalloc'd with CuPy (tritonclient 2.51's helper needs
cuda-python 12). Writes ``<out>/gpu_results.md`` (a RESULTS.md section), CSV/JSON files,
``<out>/server.log`` (every server line) and, when a run hangs, ``<out>/hang_*.txt``
(benchmarks/hang_dump.py: requests held per model, stub stacks in server.log).

Layouts on several GPUs (--layout): ``single``, one server over every GPU (the ensemble
scheduler then moves frames between GPUs: docs/multi_gpu.md), or ``per-gpu``, one server
per GPU (``tddfa serve --gpus i`` each, each under its own MPS daemon), perf_analyzer and the
video copies spread over them (their CUDA regions on their server's GPU).

  python3 benchmarks/gpu_bench.py --repository build/gpu_repository --out /tmp/bench
  python3 benchmarks/gpu_bench.py --mps --layout per-gpu --parts a,c --out $OUT/x2
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # as tools/serve/server.py gives the server (before numpy)

import numpy as np  # noqa: E402
from gpu_video_copies import Target, decode_only_fps, video_copies  # noqa: E402
from hang_dump import dump  # noqa: E402

LOG = logging.getLogger("benchmarks.gpu")
REPO_ROOT = Path(__file__).resolve().parents[1]
ENSEMBLE = "tddfa"
OUTPUT_REGION = 4 << 20  # largest output: VERTICES 8 x 3 x 38365 float32 = 3.7 MB


# --------------------------------------------------------------------------- frames
def read_frames(video: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` frames as (H, W, 3) uint8 RGB (OpenCV's FFmpeg decoder)."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < count:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    capture.release()
    if not frames:
        raise SystemExit(f"{video}: no frames decoded (OpenCV without FFmpeg?)")
    return frames


# --------------------------------------------------------------------------- (a) + (d)
def perf_env(site: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if site is not None:  # libb64.so.0d and libcudart.so.12 links next to the wheel's libs
        libs = str(site / "nvidia_pytriton.libs")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libs, env.get("LD_LIBRARY_PATH")) if p)
    return env


def write_input_data(frames: list[np.ndarray], path: Path) -> None:
    entries = [
        {
            "IMAGE": {
                "content": {"b64": base64.b64encode(f.tobytes()).decode()},
                "shape": list(f.shape),
            }
        }
        for f in frames
    ]
    path.write_text(json.dumps({"data": entries}))


def perf_analyzer(binary: Path, env, url: str, data: Path, concurrency: int, csv_path: Path,
                  interval_ms: int, shared_memory: str, stability: int = 25,
                  timeout: float = 300.0, on_hang=None) -> dict[str, str]:  # fmt: skip
    """One perf_analyzer run; raises RuntimeError when it fails or outlives ``timeout`` s
    (then ``on_hang(label)`` is called first, while its requests are still in the server)."""
    command = [
        str(binary), "-m", "tddfa", "-u", url, "-i", "grpc", "--input-data", str(data),
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-mode", "time_windows", "--measurement-interval", str(interval_ms),
        "--max-trials", "8", "--stability-percentage", str(stability), "-f", str(csv_path),
        "--shared-memory", shared_memory,
    ]  # fmt: skip
    if shared_memory != "none":
        command += ["--output-shared-memory-size", str(OUTPUT_REGION)]
    LOG.info("%s", " ".join(command))
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if on_hang is not None:
            on_hang(f"perf_c{concurrency}")
        process.kill()
        stdout, stderr = process.communicate()
        raise RuntimeError(
            f"perf_analyzer c={concurrency} at {url} did not finish within {timeout:.0f} s: "
            f"requests stuck in the server (hang_perf_c{concurrency}*.txt, server.log)\n"
            f"{stdout[-2000:]}{stderr[-2000:]}"
        ) from None
    if process.returncode != 0 and "stable measurement" in stdout and stability < 60:
        LOG.warning("c=%d not stable within %d %%: again with 60 %%", concurrency, stability)
        return perf_analyzer(binary, env, url, data, concurrency, csv_path, interval_ms,
                             shared_memory, 60, timeout, on_hang)  # fmt: skip
    if process.returncode != 0:
        raise RuntimeError(
            f"perf_analyzer failed (c={concurrency}):\n{stdout[-3000:]}{stderr[-3000:]}"
        )
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))[-1]


def perf_sweep_point(servers, args, env, data, concurrency, on_hang) -> list:
    """One concurrency point over every server at once (per-gpu layout: ``concurrency``
    split evenly, perf_analyzer k pinned to server k's GPU so its CUDA regions live there);
    infer/s summed, latencies the worst server's."""
    share = max(1, concurrency // len(servers))
    rows: list = [None] * len(servers)
    failures: list = []

    def one(k):
        try:
            if args.outputs != "all":  # what a video client asks for: the client-like load
                rows[k] = client_load(servers[k], args, share)
                return
            server_env = dict(env)
            if servers[k].gpus is not None:
                server_env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, servers[k].gpus))
            rows[k] = perf_analyzer(args.perf_analyzer, server_env, servers[k].grpc_url, data,
                                    share, args.out / f"perf_c{concurrency}_s{k}.csv",
                                    args.interval_ms, "cuda", timeout=args.perf_timeout,
                                    on_hang=on_hang)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the others end
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(servers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    ms = lambda row, k: float(row.get(k) or "nan") / 1e3  # noqa: E731
    return [share * len(servers), sum(float(r["Inferences/Second"]) for r in rows),
            *(max(ms(r, k) for r in rows) for k in ("p50 latency", "p90 latency",
                                                    "p99 latency", "Server Queue",
                                                    "Server Compute Infer"))]  # fmt: skip


def client_load(server, args, concurrency: int) -> dict[str, str]:
    """tddfa_clients.perf_load at one concurrency against ``server``: only ``--outputs``
    requested, frames in CUDA shared memory, sequences of ``--frames`` frames in track mode;
    a perf_analyzer-like row (no server-side split: queue/compute read as nan)."""
    from tddfa_clients.perf_load import LoadSettings, measure

    frames = read_frames(args.video, args.frames)
    settings = LoadSettings(
        url=server.grpc_url, model="tddfa_track" if args.mode == "track" else ENSEMBLE,
        outputs=tuple(o for o in args.outputs.split(",") if o), shared_memory="cuda",
        sequence_length=args.frames if args.mode == "track" else None,
        measurement_ms=args.interval_ms, gpu=server.gpus[0] if server.gpus else 0,
    )  # fmt: skip
    row = measure(settings, frames, concurrency, args.load_processes)
    return {k: str(v) for k, v in row.items()}


def read_stats(url: str) -> dict[str, dict]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True)
    models = {}
    for entry in stats.get("model_stats", []):
        inference = entry.get("inference_stats", {})
        record = {
            "requests": int(inference.get("success", {}).get("count", 0)),
            "executions": int(entry.get("execution_count", 0)),
            "inferences": int(entry.get("inference_count", 0)),
        }
        for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
            record[phase] = int(inference.get(phase, {}).get("ns", 0))
        models[entry["name"]] = record
    return models


def stats_table(before: dict, after: dict, seconds: float) -> tuple[list[str], list[list]]:
    """Per model over the interval. Triton adds a batched execution's phase times to each
    request of the batch, so a phase's time per execution is its sum / requests."""
    header = ["model", "req/s", "avg batch", "queue ms/req", "in ms/exec", "infer ms/exec",
              "out ms/exec", "busy % (all inst.)"]  # fmt: skip
    rows = []
    steps = sorted(name for name in after if name != ENSEMBLE)  # whatever the build serves
    for name in (*steps, ENSEMBLE):
        a, b = after.get(name), before.get(name, {})
        if a is None:
            continue
        d = {k: v - b.get(k, 0) for k, v in a.items()}
        if not d["requests"]:
            continue
        execs = max(d["executions"], 1)
        phase = {
            k: d[k] / 1e6 / d["requests"]
            for k in ("compute_input", "compute_infer", "compute_output")
        }
        busy = sum(phase.values()) * execs / 1e3 / seconds
        rows.append([
            name, d["requests"] / seconds, d["inferences"] / execs,
            d["queue"] / 1e6 / d["requests"], phase["compute_input"], phase["compute_infer"],
            phase["compute_output"], 100 * busy,
        ])  # fmt: skip
    return header, rows


# --------------------------------------------------------------------------- (b)
def in_process(
    repository: Path,
    frames: list[np.ndarray],
    seconds: float,
    device: str = "cuda:0",
    batch_sizes: tuple[int, ...] = (1, 8),
    threads: int = 4,
) -> dict:
    """The tddfa ensemble's steps in-process (bench_in_process's step loop, its v2 steps):
    per-step ms and frames/s per batch size, then ``threads`` pipelines at the largest batch.
    Runs on the CPU too (``device="cpu"``), e.g. to check this part without a GPU."""
    from bench_in_process import run_steps, steps_of, synchronize, to_device

    from tddfa.pipeline import Pipeline

    pipeline = Pipeline(repository, device=device)
    names = steps_of("detect")
    result = {}
    for batch in batch_sizes:
        rotated = [frames[(i + j) % len(frames)] for i in range(len(frames)) for j in range(batch)]
        batches = to_device(rotated, device, batch)  # len(frames) batches of `batch` frames
        for b in batches[:3]:
            run_steps(pipeline, b, device, None)  # warm-up: CUDA graphs, cuDNN, GL targets
        times = {name: [] for name in names}
        for b in batches * 3:
            run_steps(pipeline, b, device, times)
        result[f"step_ms_b{batch}"] = {n: 1e3 * statistics.median(v) for n, v in times.items() if v}
        synchronize(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            run_steps(pipeline, batches[count % len(batches)], device, None)
            count += 1
        synchronize(device)
        result[f"fps_b{batch}"] = count * batch / (time.perf_counter() - start)

    # several threads, each with its own pipeline (GL context, CUDA graphs), largest batch
    batch = max(batch_sizes)
    pipelines = [pipeline] + [Pipeline(repository, device=device) for _ in range(threads - 1)]
    rotated = [frames[(i + j) % len(frames)] for i in range(4) for j in range(batch)]
    largest = to_device(rotated, device, batch)
    done = [0] * threads
    stop = threading.Event()

    def work(index):
        p = pipelines[index]
        for b in largest[:2]:
            p(b)
        while not stop.is_set():
            p(largest[done[index] % len(largest)])
            done[index] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    time.sleep(2.0)  # warm-up of the extra pipelines
    first, start = sum(done), time.perf_counter()
    time.sleep(seconds)
    result["fps_threads"] = (sum(done) - first) * batch / (time.perf_counter() - start)
    result["threads"], result["threads_batch"] = threads, batch
    stop.set()
    for w in workers:
        w.join()
    for p in pipelines:
        p.close()
    return result


# --------------------------------------------------------------------------- report
def gpu_description() -> str:
    """nvidia-smi's name, driver and memory of each GPU, or why there is none."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return f"no GPU description ({exc})"


@contextlib.contextmanager
def guarded(name: str, md: list[str]):
    """Run one benchmark part; a failure is logged and noted, the other parts still run."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001
        LOG.exception("%s failed", name)
        md += [f"**{name} failed**: `{type(exc).__name__}: {str(exc)[:500]}`", ""]


def table(header, rows) -> str:
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "build" / "gpu_repository")
    parser.add_argument("--video", type=Path,
                        default=Path(os.environ.get("TDDFA_ASSET_DIR", REPO_ROOT.parent / "shared" / "assets")) / "video" / "emma720.mp4")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", default="b,a,d,c", help="which of a,b,c,d to run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--stats-concurrency", type=int, default=32)
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--in-flight", type=int, default=4, help="frames in flight per video copy")
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=4.0, help="(b) timing per case")
    parser.add_argument("--device", default="cuda:0", help="(b): cuda:N, or cpu to check it here")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="(b)")
    parser.add_argument("--threads", type=int, default=4, help="(b): pipelines in parallel")
    parser.add_argument("--frames", type=int, default=8, help="distinct frames for (a), (b)")
    parser.add_argument(
        "--outputs", default="RENDERED",
        help="(a): outputs to request (default RENDERED, what a video client asks for: the "
        "project's client-like load); `all`: perf_analyzer, every output (VERTICES included)",
    )  # fmt: skip
    parser.add_argument(
        "--mode", choices=("detect", "track"), default="detect",
        help="(a) with --outputs: detect = tddfa; track = sequences of --frames frames to "
        "tddfa_track",
    )  # fmt: skip
    parser.add_argument(
        "--load-processes", type=int, default=2, help="(a) with --outputs: client processes"
    )
    parser.add_argument(
        "--perf-analyzer", type=Path, default=Path("/tmp/tddfa/site/bin/perf_analyzer")
    )
    parser.add_argument("--site", type=Path, default=Path("/tmp/tddfa/site"))
    parser.add_argument("--pool-mb", type=int, default=4096)
    parser.add_argument(
        "--mps", action="store_true", help="serve under CUDA MPS (tddfa serve --cuda-mps)"
    )
    parser.add_argument(
        "--layout", choices=("single", "per-gpu"), default="single",
        help="single: one server over every GPU; per-gpu: one server per GPU (--gpus i)",
    )  # fmt: skip
    parser.add_argument(
        "--perf-timeout", type=float, default=300.0,
        help="seconds one perf_analyzer run may take before it counts as hung (hang dump)",
    )  # fmt: skip
    parser.add_argument(
        "--request-timeout", type=float, default=60.0,
        help="(c): seconds a video request may take before its copy reports it stuck",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    server_log = logging.getLogger("tritonserver")  # every server line to <out>/server.log
    server_log.setLevel(logging.INFO)
    server_log.addHandler(logging.FileHandler(args.out / "server.log"))
    if not os.environ.get("TDDFA_BENCH_SERVER_LOG"):  # set it to see the log on the console too
        server_log.propagate = False
    parts = set(args.parts.split(","))
    frames = read_frames(args.video, args.frames)
    report = {"machine": gpu_description(), "cpus": os.cpu_count(), "frame": list(frames[0].shape)}
    md = []

    if "b" in parts:
        with guarded("(b)", md):
            LOG.info("(b) in-process")
            sizes = tuple(args.batch_sizes)
            report["b"] = res = in_process(args.repository, frames, args.seconds, args.device,
                                           sizes, args.threads)  # fmt: skip
            lo, hi = min(sizes), max(sizes)
            rows = [[n, res[f"step_ms_b{lo}"][n], res[f"step_ms_b{hi}"][n],
                     res[f"step_ms_b{hi}"][n] / hi] for n in res[f"step_ms_b{lo}"]]  # fmt: skip
            rows.append(
                ["sum", sum(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] for r in rows)]
            )
            md += [f"**(b) in-process pipeline (tddfa.pipeline on {args.device}, no Triton)**", "",
                   "```", table(["step", f"ms b={lo}", f"ms b={hi}", f"ms/frame b={hi}"], rows),
                   "frames/s: " + ", ".join(f"batch {b} = {res[f'fps_b{b}']:.1f}" for b in sizes)
                   + f", {args.threads} threads x batch {hi} = {res['fps_threads']:.1f}",
                   "```", ""]  # fmt: skip
            (args.out / "gpu_results.md").write_text("\n".join(md))

    server_parts = parts & {"a", "c", "d"}
    if server_parts:
        from tddfa_tools.serve.cuda_mps import cuda_memory_pool_args, visible_gpu_count
        from tddfa_tools.serve.server import TritonServer

        with contextlib.ExitStack() as stack:
            if args.layout == "per-gpu":
                servers = [
                    stack.enter_context(
                        TritonServer(
                            args.repository,
                            startup_timeout=600,
                            gpus=[gpu],
                            cuda_mps=args.mps,
                            extra_args=cuda_memory_pool_args(args.pool_mb, gpus=1),
                            restrict_admin=False,  # perf_analyzer registers CUDA regions
                        )
                    )  # fmt: skip
                    for gpu in range(visible_gpu_count())
                ]
                targets = [Target(srv.grpc_url, device=srv.gpus[0], server_device=0)
                           for srv in servers]  # fmt: skip
            else:
                servers = [stack.enter_context(TritonServer(
                    args.repository, startup_timeout=600, cuda_mps=args.mps,
                    extra_args=cuda_memory_pool_args(args.pool_mb),
                    restrict_admin=False,  # perf_analyzer registers CUDA regions
                ))]  # fmt: skip
                targets = [Target(servers[0].grpc_url)]
            layout = (f"{len(servers)} server(s), layout {args.layout}, "
                      f"{'MPS' if args.mps else 'no MPS'}")  # fmt: skip
            report["layout"] = layout

            def on_hang(label: str) -> None:
                for k, srv in enumerate(servers):
                    mps = srv._mps.log_problems() if srv._mps is not None else None
                    text = dump(srv.pid, srv.metrics_url, mps)
                    (args.out / f"hang_{label}_s{k}.txt").write_text(text)
                    LOG.error("hang dump of server %d:\n%s", k, text)

            url = servers[0].grpc_url
            env = perf_env(args.site)
            data = args.out / "input_data.json"
            write_input_data(frames, data)
            if "a" in parts:
                with guarded("(a)", md):
                    rows = []
                    for c in args.concurrency:
                        rows.append(perf_sweep_point(servers, args, env, data, c, on_hang))
                        LOG.info(
                            "c=%d: %.1f infer/s p50 %.2f ms", rows[-1][0], rows[-1][1], rows[-1][2]
                        )
                    report["a"] = rows
                    best = max(rows, key=lambda r: r[1])
                    driver = ("perf_analyzer, every output" if args.outputs == "all" else
                              f"client-like load (tddfa perf), outputs {args.outputs}, mode "
                              f"{args.mode}")  # fmt: skip
                    md += [f"**(a) {driver}, gRPC, CUDA shared memory in and out**", "",
                           f"{layout}; {len(frames)} distinct {frames[0].shape[1]}x{frames[0].shape[0]} "
                           f"frames of {args.video.name} (one face), batch 1 per request, time "
                           f"windows of {args.interval_ms} ms; several servers: concurrency split "
                           "evenly, infer/s summed, latencies of the slowest server; server columns "
                           "are perf_analyzer's per-request sums over the ensemble's steps", "", "```",
                           table(["conc", "infer/s", "p50 ms", "p90 ms", "p99 ms", "queue ms",
                                  "compute ms"], rows),
                           f"best: {best[1]:.1f} infer/s at concurrency {best[0]}; "
                           f"p50 at concurrency {rows[0][0]}: {rows[0][2]:.2f} ms", "```", ""]  # fmt: skip
                    (args.out / "gpu_results.md").write_text("\n".join(md))
            if "d" in parts:
                with guarded("(d)", md):
                    c = args.stats_concurrency
                    before, t0 = read_stats(url), time.perf_counter()
                    row = perf_analyzer(args.perf_analyzer, env, url, data, c,
                                        args.out / f"perf_stats_c{c}.csv", args.interval_ms, "cuda",
                                        timeout=args.perf_timeout, on_hang=on_hang)  # fmt: skip
                    seconds = time.perf_counter() - t0
                    after = read_stats(url)
                    header, rows = stats_table(before, after, seconds)
                    report["d"] = {"concurrency": c, "rows": rows}
                    md += [f"**(d) per-step statistics (v2/models/stats) during perf_analyzer at "
                           f"concurrency {c} ({float(row['Inferences/Second']):.1f} infer/s; server 0 "
                           f"of {layout})**", "",
                           "busy % = compute time of all instances / wall time (200 % = two "
                           "instances always busy)", "", "```", table(header, rows), "```", ""]  # fmt: skip
                    (args.out / "gpu_results.md").write_text("\n".join(md))
            if "c" in parts:
                with guarded("(c)", md):
                    decode = decode_only_fps(args.video)
                    rows = []
                    for copies in args.copies:
                        LOG.info("(c) %d copies", copies)
                        res = video_copies(targets, args.video, copies, args.in_flight,
                                           args.request_timeout)  # fmt: skip
                        LOG.info("video x%d: %s", copies, res)
                        if res["failed_copies"]:
                            on_hang(f"video_x{copies}")
                        rows.append([copies, res["frames"], res["wall_s"], res["fps"],
                                     res["per_copy_fps"], res["one_face_frames"],
                                     res["failed_copies"], "; ".join(res["errors"]) or "-"])  # fmt: skip
                    report["c"] = {"decode_only_fps": decode, "rows": rows}
                    md += ["**(c) end-to-end video: N parallel copies of emma720.mp4 (300 frames each)**", "",
                           f"{layout}; decode: OpenCV/FFmpeg on the CPU -> CuPy -> CUDA shared "
                           "memory on the server's GPU -> ensemble -> RENDERED left in CUDA shared "
                           f"memory, no encode (no NVENC on the H100/H200); {args.in_flight} frames in "
                           f"flight per copy; one client thread per copy; decode alone: {decode:.0f} frames/s "
                           "for one stream", "", "```",
                           table(["copies", "frames", "wall s", "frames/s", "per copy", "1-face frames",
                                  "failed copies", "errors"], rows), "```", ""]  # fmt: skip
                    (args.out / "gpu_results.md").write_text("\n".join(md))
    (args.out / "gpu_results.json").write_text(json.dumps(report, indent=1, default=str))
    sys.stdout.write("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
