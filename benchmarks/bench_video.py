"""Benchmark (c): end-to-end video, N parallel copies of the sample video through a server.

Each copy runs in its own process with the video client (tddfa_clients): decode (NVDEC
when available, else PyAV) -> the ensemble with several frames in flight -> encode
(``tddfa video``'s encoder) or, with ``--no-encode``, the rendered frames are dropped.
All copies start together (a barrier); aggregate frames/s = all frames / wall time from
the start to the last copy's end.

Example: .venv/bin/python benchmarks/bench_video.py --copies 1 4 --clip-frames 60
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
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
    from tddfa_clients.triton_client import FrameClient
    from tddfa_clients.video import host_frames, process_video
    from tddfa_clients.video_io import open_decoder

    source = Path(settings["video"])
    try:
        client = FrameClient(
            settings["url"],
            settings["protocol"],
            outputs=("RENDERED", "FACE_COUNT"),
            in_flight=settings["in_flight"],
            shared_memory=settings["shared_memory"],
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
            with open_decoder(source, settings["decoder"]) as decoder:
                cuda = settings["shared_memory"] == "cuda"
                stream = device_frames(decoder) if cuda else host_frames(decoder)
                for _ in client.infer_stream(stream):
                    frames += 1
                names = (decoder.name, "none")
        results.put((index, frames, start, time.perf_counter(), *names, ""))
    except Exception as exc:
        results.put((index, 0, 0.0, 0.0, "", "", f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()


def device_frames(decoder):
    """((index, pts), frame) with NVDEC frames kept on the GPU (CuPy view through DLPack),
    so CUDA shared memory receives them device to device; CPU-decoded frames stay numpy."""
    import numpy as np

    for frame in decoder:
        image = frame.image
        if not isinstance(image, np.ndarray):
            import cupy

            image = cupy.from_dlpack(image)
        yield (frame.index, frame.pts), image


def run_copies(copies: int, settings: dict) -> dict:
    """Run ``copies`` processes; aggregate numbers."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(copies)
    results = context.Queue()
    workers = [
        context.Process(target=copy_worker, args=(i, settings, barrier, results))
        for i in range(copies)
    ]
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.base_parser(__doc__)
    parser.add_argument("--url", help="HOST:PORT of a running server (default: start one)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument(
        "--clip-frames", type=int, default=0, metavar="N",
        help="use a clip of the first N frames (re-encoded, cached in build/bench); 0: whole video",
    )  # fmt: skip
    parser.add_argument(
        "--copies", type=int, nargs="+", default=[1, 4, 16], help="parallel copies (default 1 4 16)"
    )
    parser.add_argument("--in-flight", type=int, default=4, help="requests in flight per copy")
    parser.add_argument(
        "--shared-memory", choices=("auto", "system", "cuda", "none"), default="auto",
        help="client transport (default auto: system shared memory on localhost; cuda: CUDA "
        "shared memory, NVDEC frames sent from the GPU with --no-encode)",
    )  # fmt: skip
    parser.add_argument("--decoder", choices=("auto", "nvdec", "cpu"), default="auto")
    parser.add_argument(
        "--no-encode", action="store_true", help="drop the rendered frames instead of encoding"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _common.setup_logging(args.verbose)
    video = _common.first_frames_clip(args.video, args.clip_frames)
    out_dir = _common.WORK_DIR / "video_out"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    with _common.server_for(args.repository, args.url, args.protocol) as url:
        for copies in args.copies:
            settings = {
                "url": url,
                "protocol": args.protocol,
                "video": str(video),
                "in_flight": args.in_flight,
                "shared_memory": args.shared_memory,
                "decoder": args.decoder,
                "encode": not args.no_encode,
                "out_dir": str(out_dir),
            }
            run = run_copies(copies, settings)
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
            f"requests in flight per copy, shared memory {args.shared_memory}",
            f"decoder: {runs[0]['decoder']}; encoder: {runs[0]['encoder']}",
            f"server: {args.url or args.repository}",
        ]
        title = "(c) end-to-end video, " + ("no encode" if args.no_encode else "with encode")
        _common.append_results(title, table, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
