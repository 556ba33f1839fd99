"""Benchmark (c): end-to-end video, N streams of the sample video through a server, with the
host work per frame of every kind of process.

Each stream is one video through ``tddfa video``'s own client (tddfa_clients.video_streams:
decode -> the ensemble over a gRPC stream -> encode, or with ``--no-encode`` the rendered
frames only brought back, left in their shared memory region and dropped). The streams run
in ``--processes`` client processes (default 1: one process drives every stream), all
started together; aggregate frames/s = all frames / wall time from the first start to the
last end. ``--repeat R`` plays the clip R times in a row in every stream (a long clip
without a long file: start-up then weighs little).

Around each run it reads the CPU time (utime + stime, /proc) of the client processes, of
tritonserver, of each model's stubs, of the ``tddfa serve`` supervisor and of CUDA MPS, and
divides by the frames: "CPU ms per frame" per kind; plus the machine's busy cores and the
GPU's busy share (NVML). Prints both tables and appends them to RESULTS.md.

NVDEC + CUDA shared memory (frames never visit the host; needs PyNvVideoCodec and CuPy):
  python3 benchmarks/bench_video.py --url localhost:8001 --decoder nvdec \\
      --shared-memory cuda --no-encode --streams 1 16 --repeat 4 --mode track
Several servers, one per GPU (``tddfa serve --gpus N`` each): give every URL, and the GPU
of each; streams take the URLs in turn, one client process per URL at least:
  ... --url localhost:8001 --url localhost:8011 --client-gpus 0,1 --streams 32

Example (CPU): .venv/bin/python benchmarks/bench_video.py --streams 1 2 --clip-frames 60
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import _common
from _cpu_usage import CpuWindow, GpuBusy, listening_pid, per_frame_rows

LOG = logging.getLogger("benchmarks.video")


def client_worker(index: int, settings: dict, streams: int, barrier, results) -> None:
    """One client process with ``streams`` videos; puts (index, frames, start, end, CPU
    seconds, decoder, encoder, per-stream fps list, error)."""
    if settings.get("cuda_visible_devices") is not None:  # before any CUDA library loads
        os.environ["CUDA_VISIBLE_DEVICES"] = settings["cuda_visible_devices"]
    from tddfa_clients.video import model_for
    from tddfa_clients.video_streams import StreamClient, StreamOptions, VideoJob

    source = Path(settings["video"])
    out_dir = Path(settings["out_dir"])
    encode = settings["encode"]
    jobs = [
        VideoJob(source, out_dir / f"p{index}s{i}.mp4")
        if encode
        else VideoJob(source, repeat=settings["repeat"])
        for i in range(streams)
    ]
    options = StreamOptions(
        model=model_for(settings["mode"]),
        outputs=tuple(settings["outputs"]),
        in_flight=settings["in_flight"],
        shared_memory=settings["shared_memory"],
        timeout=settings["timeout"],
        decoder=settings["decoder"],
        encoder="auto",
    )
    try:
        client = StreamClient(settings["url"], options)
    except Exception as exc:
        barrier.abort()
        results.put((index, 0, 0.0, 0.0, 0.0, "", "", [], f"{type(exc).__name__}: {exc}"))
        return
    try:
        barrier.wait()
        start = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_SELF)  # imports and set-up not counted
        if settings.get("profile") and index == 0:
            from _sampler import StackSampler

            with StackSampler() as sampler:
                stats = client.run(jobs)
            Path(settings["profile"]).mkdir(parents=True, exist_ok=True)
            (Path(settings["profile"]) / "client_stacks.txt").write_text(sampler.report())
        else:
            stats = client.run(jobs)
        end = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        errors = [f"{type(s).__name__}: {s}" for s in stats if isinstance(s, BaseException)]
        done = [s for s in stats if not isinstance(s, BaseException)]
        results.put((
            index, sum(s.frames for s in done), start, end,
            usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime,
            done[0].decoder if done else "", done[0].encoder if done else "",
            [s.fps for s in done], errors[0] if errors else "",
        ))  # fmt: skip
    except Exception as exc:
        results.put((index, 0, 0.0, 0.0, 0.0, "", "", [], f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()


def run_streams(streams: int, processes: int, settings: dict, urls: list[str], gpus: list[int]):
    """``streams`` videos over ``processes`` client processes (process k against
    ``urls[k % len(urls)]``); aggregate frames/s and the CPU of every kind of process."""
    processes = max(len(urls), min(processes, streams))
    share = [streams // processes + (1 if k < streams % processes else 0) for k in range(processes)]
    context = mp.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    results = context.Queue()
    workers = []
    for k in range(processes):
        mine = dict(settings, url=urls[k % len(urls)])
        if gpus:
            mine["cuda_visible_devices"] = str(gpus[k % len(urls)])
        workers.append(
            context.Process(target=client_worker, args=(k, mine, share[k], barrier, results))
        )
    for worker in workers:
        worker.start()
    with GpuBusy() as gpu:
        barrier.wait()  # every client is connected: measure from here
        window = CpuWindow(server_pids(urls)).start()
        rows = [results.get() for _ in workers]
        server = window.stop()
    for worker in workers:
        worker.join()
    errors = [r[8] for r in rows if r[8]]
    if errors:
        raise SystemExit(
            f"{len(errors)} of {processes} client processes failed; first: {errors[0]}"
        )
    start, end = min(r[2] for r in rows), max(r[3] for r in rows)
    frames = sum(r[1] for r in rows)
    return {
        "streams": streams,
        "processes": processes,
        "frames": frames,
        "seconds": end - start,
        "fps": frames / (end - start),
        "slowest": min(f for r in rows for f in r[7]),
        "client_s": sum(r[4] for r in rows),
        "server": server,
        "gpu": gpu.percent,
        "decoder": rows[0][5],
        "encoder": rows[0][6],
    }


def server_pids(urls: list[str]) -> list[int] | None:
    """The tritonserver processes answering ``urls`` (None: count every one found)."""
    pids = [listening_pid(int(url.rsplit(":", 1)[1])) for url in urls if ":" in url]
    return None if not pids or None in pids else pids


def _gpu_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--client-gpus takes e.g. 0,1, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.base_parser(__doc__)
    parser.add_argument(
        "--url", action="append", default=[],
        help="HOST:PORT (gRPC) of a running server (repeat for several servers); default: "
        "start one on --repository",
    )  # fmt: skip
    parser.add_argument(
        "--clip-frames", type=int, default=0, metavar="N",
        help="use a clip of the first N frames (re-encoded with PyAV, cached in build/bench); "
        "0: whole video",
    )  # fmt: skip
    parser.add_argument(
        "--streams", type=int, nargs="+", default=[1, 4, 16], help="videos at once (default 1 4 16)"
    )
    parser.add_argument(
        "--processes", type=int, default=1,
        help="client processes the streams are spread over (default 1)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="plays of the clip per stream")
    parser.add_argument("--in-flight", type=int, default=4, help="frames in flight per stream")
    parser.add_argument(
        "--shared-memory", choices=("auto", "system", "cuda", "none"), default="auto",
        help="client transport (default auto: system shared memory on localhost; cuda: CUDA "
        "shared memory, NVDEC frames copied device to device, RENDERED left on the GPU)",
    )  # fmt: skip
    parser.add_argument("--decoder", choices=("auto", "nvdec", "cpu"), default="auto")
    parser.add_argument(
        "--outputs", default="RENDERED",
        help="comma-separated outputs to request (FACE_COUNT is always added; default RENDERED, "
        "what a video client asks for)",
    )  # fmt: skip
    parser.add_argument(
        "--client-gpus", type=_gpu_list, default=[], metavar="LIST",
        help="GPU of each --url's server (its `tddfa serve --gpus`): clients of URL k run "
        "with CUDA_VISIBLE_DEVICES=LIST[k], so NVDEC and the CUDA regions are on it",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=120.0,
        help="seconds a frame may wait for its answer before its stream fails",
    )  # fmt: skip
    parser.add_argument(
        "--no-encode", action="store_true", help="drop the rendered frames instead of encoding"
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="sample the first client process's Python stacks (every thread) into "
        "DIR/client_stacks.txt",
    )  # fmt: skip
    parser.add_argument(
        "--mode", choices=("detect", "track"), default="detect",
        help="detect: frames to tddfa; track: each stream is one sequence of tddfa_track",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.client_gpus and len(args.client_gpus) != max(len(args.url), 1):
        parser.error("--client-gpus needs one GPU per --url")
    if args.repeat > 1 and not args.no_encode:
        parser.error("--repeat needs --no-encode (a repeated clip is not written)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _common.setup_logging(args.verbose)
    video = _common.first_frames_clip(args.video, args.clip_frames)
    out_dir = _common.WORK_DIR / "video_out"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    with _common.server_for(args.repository, args.url[0] if args.url else None, "grpc") as url:
        urls = args.url or [url]
        for streams in args.streams:
            settings = {
                "video": str(video), "in_flight": args.in_flight, "mode": args.mode,
                "shared_memory": args.shared_memory, "decoder": args.decoder,
                "encode": not args.no_encode, "out_dir": str(out_dir), "timeout": args.timeout,
                "repeat": args.repeat, "outputs": [o for o in args.outputs.split(",") if o],
                "profile": str(args.profile) if args.profile else None,
            }  # fmt: skip
            run = run_streams(streams, args.processes, settings, urls, args.client_gpus)
            LOG.info("%d streams: %.1f frames/s", streams, run["fps"])
            runs.append(run)
    table = _common.format_table(
        ["streams", "processes", "frames", "seconds", "frames/s", "slowest stream fps",
         "client ms/frame", "server ms/frame", "cores busy", "GPU busy %"],
        [(r["streams"], r["processes"], r["frames"], r["seconds"], r["fps"], r["slowest"],
          per_frame_rows(r["server"], r["client_s"], r["frames"])[0][1],
          per_frame_rows(r["server"], r["client_s"], r["frames"])[1][1],
          r["server"]["cores busy"], "-" if r["gpu"] is None else r["gpu"]) for r in runs],
    )  # fmt: skip
    largest = runs[-1]
    cpu_table = _common.format_table(
        ["process kind", f"CPU ms/frame ({largest['streams']} streams)"],
        per_frame_rows(largest["server"], largest["client_s"], largest["frames"]),
    )
    sys.stdout.write(table + "\n\n" + cpu_table + "\n")
    sys.stdout.write(f"best: {max(r['fps'] for r in runs):.1f} frames/s\n")
    if not args.no_results:
        clip = (
            f"a clip of the first {args.clip_frames} frames of {args.video.name}"
            if args.clip_frames
            else args.video.name
        ) + (f", played {args.repeat} times per stream" if args.repeat > 1 else "")
        notes = [
            f"source: {clip}; {args.processes} client process(es), gRPC streams, "
            f"{args.in_flight} frames in flight per stream, shared memory {args.shared_memory}, "
            f"mode {args.mode}, outputs {args.outputs}",
            f"decoder: {runs[0]['decoder']}; encoder: {runs[0]['encoder']}",
            f"server: {', '.join(args.url) or args.repository}"
            + (f" (client GPUs {args.client_gpus})" if args.client_gpus else ""),
            "CPU ms/frame: utime + stime of every process of a kind over the run / frames",
            f"best: {max(r['fps'] for r in runs):.1f} frames/s",
        ]
        title = f"(c) end-to-end video, {args.mode} mode, " + (
            "no encode" if args.no_encode else "with encode"
        )
        _common.append_results(title, table + "\n\n" + cpu_table, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
