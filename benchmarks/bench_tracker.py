"""Benchmark: the CPU of one ``Tracker.step`` (the face_tracker model's work), in-process.

The tracker is built from a CPU repository as the served face_tracker builds it (its
networks on one onnxruntime thread, numpy's BLAS on one thread) and steps through each
clip frame by frame, one sequence per clip: emma720.mp4, two_faces_360p.mp4 and "pair",
emma720's first 100 frames at half size beside their mirror image (two to four faces).
Each frame's thread CPU is the best of ``--rounds`` passes (other jobs on a shared box only
ever add); reported per clip: the mean over all frames, the median of the tracked frames
and the mean of the frames that ran the detector.

``--save FILE.npz`` keeps every output of every frame; ``--compare FILE.npz`` checks them
against a saved run (another commit's code) and exits 1 unless all are equal bit for bit:
how a change that must not move the outputs is checked.

Example: .venv/bin/python benchmarks/bench_tracker.py --rounds 3 --no-results
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import _common
import numpy as np

LOG = logging.getLogger("benchmarks.tracker")

CLIPS = ("emma720.mp4", "two_faces_360p.mp4")
PAIR_FRAMES = 100


def build_tracker(repository: Path):
    """The face_tracker's Tracker for ``repository``, networks on one onnxruntime thread."""
    from tddfa.aligner import Aligner
    from tddfa.cpu_threads import blas_on_one_thread
    from tddfa.detector import Detector
    from tddfa.pipeline import Pipeline
    from tddfa.runners import make_runner
    from tddfa.tracking import Tracker

    blas_on_one_thread()
    pipeline = Pipeline(repository, "cpu", render=False)
    config, bfm = pipeline.track_config, pipeline.aligner.aligner.bfm
    version = repository / "face_tracker" / "1"
    detector = Detector(config, make_runner(version / "face_detector", "cpu", threads=1))
    regressor = make_runner(version / "face_regressor", "cpu", threads=1)
    return Tracker(config, detector, Aligner(config, regressor, bfm))


def clips(video_dir: Path, frames: int) -> dict[str, list[np.ndarray]]:
    out = {Path(name).stem: _common.read_frames(video_dir / name, frames) for name in CLIPS}
    out["pair"] = [
        np.ascontiguousarray(np.concatenate([f[::2, ::2], f[::2, ::-2]], axis=1))
        for f in out["emma720"][:PAIR_FRAMES]
    ]
    return out


def run_clip(tracker, frames: list[np.ndarray]) -> tuple[list[dict], np.ndarray]:
    """One sequence through ``frames``: every step's outputs and thread CPU (ms)."""
    from tddfa.sequence_store import SequenceState

    state, outputs, cpu = SequenceState(), [], []
    for frame in frames:
        start = time.thread_time()
        outputs.append(tracker.step(frame[None], [state]))
        cpu.append(time.thread_time() - start)
    return outputs, np.asarray(cpu) * 1e3


def compare(saved: dict[str, np.ndarray], path: Path) -> bool:
    """Whether every output saved in ``path`` equals this run's bit for bit (logs the others)."""
    reference = np.load(path)
    different = []
    for name in reference.files:
        want, got = reference[name], saved.get(name)
        if got is None or got.shape != want.shape:
            different.append(name)
            LOG.error("%s: %s here, %s in %s", name, None if got is None else got.shape,
                      want.shape, path)  # fmt: skip
        elif not np.array_equal(got, want):
            different.append(name)
            gap = np.abs(got.astype(np.float64) - want).max()
            LOG.error("%s differs from %s: max |difference| %.3g", name, path, gap)
    LOG.info("%d of %d outputs equal to %s bit for bit", len(reference.files) - len(different),
             len(reference.files), path)  # fmt: skip
    return not different


def main() -> int:
    parser = _common.base_parser(__doc__)
    parser.add_argument("--frames", type=int, default=300, help="frames per clip (at most)")
    parser.add_argument("--rounds", type=int, default=3, help="passes; each frame's best counts")
    parser.add_argument("--save", type=Path, help="write every output of every frame here")
    parser.add_argument("--compare", type=Path, help="outputs saved by --save to check against")
    args = parser.parse_args()
    _common.setup_logging(args.verbose)
    tracker = build_tracker(args.repository)
    rows, saved = [], {}
    for name, frames in clips(args.video.parent, args.frames).items():
        best = None
        for _ in range(args.rounds):
            outputs, cpu = run_clip(tracker, frames)
            best = cpu if best is None else np.minimum(best, cpu)
        detected = np.array([bool(o["DETECTED"][0, 0]) for o in outputs])
        rows.append(
            [name, len(frames), int(detected.sum()), float(best.mean()),
             float(np.median(best[~detected])), float(best[detected].mean())]
        )  # fmt: skip
        for key in outputs[0]:
            saved[f"{name}/{key}"] = np.stack([o[key] for o in outputs])
    table = _common.format_table(
        ["clip", "frames", "detected", "ms/frame", "tracked median", "detected mean"], rows
    )
    print(table)
    if args.save:
        np.savez(args.save, **saved)
    equal = compare(saved, args.compare) if args.compare else True
    if not args.no_results:
        _common.append_results(
            "Tracker.step in-process: thread CPU per frame (best of the rounds)",
            table,
            [f"rounds: {args.rounds}; networks on one onnxruntime thread, BLAS on one"],
        )
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
