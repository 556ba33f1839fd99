"""(k) libx264 settings: CPU per frame, file size and quality, through the client's encoder.

The frames of a video (default: the sample; for what `tddfa video` writes, pass one of its
rendered outputs) are decoded once, then encoded by ``PyAVEncoder`` (the encoder of
``tddfa video --encoder cpu``) with each ``--settings`` entry, ``preset:crf``. Per entry: the process CPU per frame of the encode
(the RGB -> YUV conversion included), the file size, and the mean PSNR (RGB) and SSIM
(luma, Gaussian window of sigma 1.5) of the decoded result against the frames given.

Example: .venv/bin/python benchmarks/bench_x264.py --settings veryfast:20 superfast:23
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import av
import numpy as np
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, base_parser, format_table, load_average  # noqa: E402

WORK_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / "tddfa_bench_x264"


def process_cpu() -> float:
    times = os.times()
    return times.user + times.system


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004) of two luma images."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda a: gaussian_filter(a, 1.5, truncate=3.5)  # noqa: E731
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    return float(np.mean(num / ((mx * mx + my * my + c1) * (sxx + syy + c2))))


def measure(frames: list, info, preset: str, crf: int, out: Path) -> list:
    from tddfa_clients.video_pyav import PyAVEncoder

    start = process_cpu()
    with PyAVEncoder(out, info, crf=crf, preset=preset) as encoder:
        for image, pts in frames:
            encoder.write(image, pts)
    cpu_ms = 1000 * (process_cpu() - start) / len(frames)
    psnr, similarity = [], []
    with av.open(str(out)) as container:
        for index, ((image, _), frame) in enumerate(
            zip(frames, container.decode(video=0), strict=True)
        ):
            decoded = frame.to_ndarray(format="rgb24")
            error = np.mean((image.astype(np.float32) - decoded) ** 2)
            psnr.append(10 * np.log10(255**2 / max(error, 1e-10)))
            if index % 5 == 0:  # SSIM on every fifth frame: it costs more than the encode
                similarity.append(ssim(luma(image), luma(decoded)))
    size_kb = out.stat().st_size / 1000
    return [
        f"{preset} crf {crf}",
        f"{cpu_ms:.2f}",
        f"{size_kb:.0f}",
        f"{np.mean(psnr):.2f}",
        f"{np.mean(similarity):.4f}",
    ]


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--settings", nargs="+", default=["veryfast:20", "superfast:23"])
    args = parser.parse_args()
    from tddfa_clients.video_io import probe

    info = probe(args.video)
    with av.open(str(args.video)) as container:
        frames = [(f.to_ndarray(format="rgb24"), f.pts) for f in container.decode(video=0)]
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    rows = []
    for entry in args.settings:
        preset, crf = entry.split(":")
        rows.append(measure(frames, info, preset, int(crf), WORK_DIR / "encoded.mp4"))
        print(" ".join(rows[-1]), flush=True)
    table = format_table(["settings", "CPU ms/frame", "size kB", "PSNR dB", "SSIM (Y)"], rows)
    print(table)
    if not args.no_results:
        append_results(
            "(k) libx264 settings: CPU, size and quality",
            table,
            [
                f"frames: {args.video} ({len(frames)} frames, {info.width}x{info.height}), "
                "decoded once; encoded by PyAVEncoder (tddfa video's CPU encoder)",
                "CPU: the process's user + system time per frame of the encode (RGB -> YUV "
                "included); PSNR over RGB, SSIM over luma (sigma 1.5), of every fifth frame",
                f"load before: {load_before}; after: {load_average()}",
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
