"""Benchmark (c): end-to-end video, N parallel copies of the sample video through a server.

Each copy runs in its own process with the video client (tddfa_clients): decode (NVDEC
when available, else the CPU) -> the ensemble with several frames in flight -> encode
(``tddfa video``'s encoder) or, with ``--no-encode``, the rendered frames are only brought
back (into a host array, or a CuPy array with CUDA shared memory) and dropped. All copies
start together (a barrier); aggregate frames/s = all frames / wall time from the start to
the last copy's end.

NVDEC + CUDA shared memory (frames never visit the host; needs PyNvVideoCodec and CuPy):
  python3 benchmarks/bench_video.py --url localhost:8001 --decoder nvdec \\
      --shared-memory cuda --no-encode --copies 1 16
Several servers, one per GPU (``tddfa serve --gpus N`` each): give every URL, and the GPU
of each so copies decode and place their regions on their server's GPU:
  ... --url localhost:8001 --url localhost:8011 --client-gpus 0,1 --copies 32

Example (CPU): .venv/bin/python benchmarks/bench_video.py --copies 1 4 --clip-frames 60
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import _common

LOG = logging.getLogger("benchmarks.video")


def copy_worker(
    index: int,
    settings: dict,
    barrier,  # multiprocessing Barrier
    results,  # multiprocessing Queue
) -> None:
    """Process one copy; puts (index, frames, start, end, decoder, encoder, error)."""
    if settings.get("cuda_visible_devices") is not None:  # before any CUDA library loads
        os.environ["CUDA_VISIBLE_DEVICES"] = settings["cuda_visible_devices"]
    from tddfa_clients.triton_client import FrameClient, new_sequence_id
    from tddfa_clients.video import frames_for, model_for, process_video
    from tddfa_clients.video_io import open_decoder

    source = Path(settings["video"])
    cuda = settings["shared_memory"] == "cuda"
    try:
        client = FrameClient(
            settings["url"],
            settings["protocol"],
            model=model_for(settings["mode"]),
            outputs=("RENDERED", "FACE_COUNT"),
            in_flight=settings["in_flight"],
            shared_memory=settings["shared_memory"],
            timeout=settings["timeout"],
            rendered_on_device=cuda,
        )
    except Exception as exc:
        barrier.abort()
        results.put((index, 0, 0.0, 0.0, "", "", f"{type(exc).__name__}: {exc}"))
        return
    try:
        barrier.wait()
        start = time.perf_counter()
        if settings["encode"]:
            output = Path(settings["out_dir"]) / f"copy{index}.mp4"
            stats = process_video(
                client, source, output, decoder=settings["decoder"], progress=False
            )
            frames, names = stats.frames, (stats.decoder, stats.encoder)
        else:
            frames = 0
            sequence = {"sequence_id": new_sequence_id()} if settings["mode"] == "track" else {}
            with open_decoder(source, settings["decoder"]) as decoder:
                for _ in client.infer_stream(frames_for(client, decoder), **sequence):
                    frames += 1
                names = (decoder.name, "none")
        results.put((index, frames, start, time.perf_counter(), *names, ""))
    except Exception as exc:
        results.put((index, 0, 0.0, 0.0, "", "", f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()  # after every request of this copy has ended (FrameClient.close)


def run_copies(copies: int, settings: dict, urls: list[str], client_gpus: list[int]) -> dict:
    """Run ``copies`` processes, copy i against ``urls[i % len(urls)]``; aggregate."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(copies)
    results = context.Queue()
    workers = []
    for i in range(copies):
        mine = dict(settings, url=urls[i % len(urls)])
        if client_gpus:
            mine["cuda_visible_devices"] = str(client_gpus[i % len(urls)])
        workers.append(context.Process(target=copy_worker, args=(i, mine, barrier, results)))
    for worker in workers:
        worker.start()
    rows = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    errors = [r[6] for r in rows if r[6]]
    if errors:
        raise SystemExit(f"{len(errors)} of {copies} copies failed; first: {errors[0]}")
    start = min(r[2] for r in rows)
    end = max(r[3] for r in rows)
    frames = sum(r[1] for r in rows)
    per_copy = [r[1] / (r[3] - r[2]) for r in rows]
    return {
        "copies": copies,
        "frames": frames,
        "seconds": end - start,
        "fps": frames / (end - start),
        "per_copy": min(per_copy),
        "decoder": rows[0][4],
        "encoder": rows[0][5],
    }


def _gpu_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--client-gpus takes e.g. 0,1, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.base_parser(__doc__)
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        help="HOST:PORT of a running server (repeat for several servers; copies take them "
        "in turn); default: start one on --repository",
    )
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument(
        "--clip-frames", type=int, default=0, metavar="N",
        help="use a clip of the first N frames (re-encoded with PyAV, cached in build/bench); "
        "0: whole video",
    )  # fmt: skip
    parser.add_argument(
        "--copies", type=int, nargs="+", default=[1, 4, 16], help="parallel copies (default 1 4 16)"
    )
    parser.add_argument("--in-flight", type=int, default=4, help="requests in flight per copy")
    parser.add_argument(
        "--shared-memory", choices=("auto", "system", "cuda", "none"), default="auto",
        help="client transport (default auto: system shared memory on localhost; cuda: CUDA "
        "shared memory, NVDEC frames copied device to device, RENDERED back on the GPU)",
    )  # fmt: skip
    parser.add_argument("--decoder", choices=("auto", "nvdec", "cpu"), default="auto")
    parser.add_argument(
        "--client-gpus",
        type=_gpu_list,
        default=[],
        metavar="LIST",
        help="GPU of each --url's server (its `tddfa serve --gpus`): copies against URL k "
        "run with CUDA_VISIBLE_DEVICES=LIST[k], so NVDEC and the CUDA regions are on it",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0,
        help="seconds a request may take before the copy fails (a stuck server shows as an "
        "error, not a hang)",
    )  # fmt: skip
    parser.add_argument(
        "--no-encode", action="store_true", help="drop the rendered frames instead of encoding"
    )
    parser.add_argument(
        "--mode",
        choices=("detect", "track"),
        default="detect",
        help="detect: frames to tddfa; track: each copy is one sequence of tddfa_track",
    )
    args = parser.parse_args(argv)
    if args.client_gpus and len(args.client_gpus) != max(len(args.url), 1):
        parser.error("--client-gpus needs one GPU per --url")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _common.setup_logging(args.verbose)
    video = _common.first_frames_clip(args.video, args.clip_frames)
    out_dir = _common.WORK_DIR / "video_out"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    with _common.server_for(
        args.repository, args.url[0] if args.url else None, args.protocol
    ) as url:
        urls = args.url or [url]
        for copies in args.copies:
            settings = {
                "protocol": args.protocol,
                "video": str(video),
                "in_flight": args.in_flight,
                "shared_memory": args.shared_memory,
                "decoder": args.decoder,
                "encode": not args.no_encode,
                "out_dir": str(out_dir),
                "timeout": args.timeout,
                "mode": args.mode,
            }
            run = run_copies(copies, settings, urls, args.client_gpus)
            LOG.info("%d copies: %.2f frames/s", copies, run["fps"])
            runs.append(run)
    table = _common.format_table(
        ["copies", "frames", "seconds", "frames/s", "slowest copy fps"],
        [(r["copies"], r["frames"], r["seconds"], r["fps"], r["per_copy"]) for r in runs],
    )
    sys.stdout.write(table + "\n")
    if not args.no_results:
        clip = (
            f"a clip of the first {args.clip_frames} frames of {args.video.name}"
            if args.clip_frames
            else args.video.name
        )
        notes = [
            f"source: {clip}; one process per copy, {args.protocol}, {args.in_flight} "
            f"requests in flight per copy, shared memory {args.shared_memory}, mode {args.mode}"
            + (" (each copy one tddfa_track sequence)" if args.mode == "track" else " (tddfa)"),
            f"decoder: {runs[0]['decoder']}; encoder: {runs[0]['encoder']}",
            f"server: {', '.join(args.url) or args.repository}"
            + (f" (client GPUs {args.client_gpus})" if args.client_gpus else ""),
        ]
        title = f"(c) end-to-end video, {args.mode} mode, " + (
            "no encode" if args.no_encode else "with encode"
        )
        _common.append_results(title, table, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
