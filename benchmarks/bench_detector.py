"""Benchmark (e): the detector and the regressor on the CPU, before/after tddfa.detector.

Per 720p frame of the sample video, the candidates are timed interleaved (frame by frame, in
rotating order, so that other jobs on a shared machine hit them alike):

- preprocess, before: ``tddfa.preprocess.to_detector_canvas`` (numpy fixed-point resize);
- preprocess, after: ``Detector.preprocess`` (``cv2.resize`` + channel copies);
- detector, before: numpy canvas + FaceBoxes (onnxruntime) + ``select_faces``;
- detector, after: ``Detector(frames)`` (OpenCV canvas + FaceBoxes + selection);
- detector graph: the whole-detector ONNX graph in onnxruntime (onnxruntime flavour);
- regressor, before: K=8 slots for one face; after: ``run_filled_slots`` (the one face).

Example: .venv/bin/python benchmarks/bench_detector.py --frames 60 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

import _common
import numpy as np

LOG = logging.getLogger("benchmarks.detector")
MODELS = _common.WORK_DIR / "detector_models"


def _models(asset_dir: Path):
    from tddfa.config import PipelineConfig
    from tddfa_tools.build.export_onnx import (
        export_detector_graph,
        export_face_detector,
        export_face_regressor,
    )

    weights = asset_dir / "3ddfa_v2"
    paths = {
        "network": MODELS / "face_detector" / "model.onnx",
        "regressor": MODELS / "face_regressor" / "model.onnx",
        "graph": MODELS / "face_detector_graph.onnx",
    }
    if not paths["network"].is_file():
        export_face_detector(weights / "FaceBoxesProd.pth", paths["network"])
    if not paths["regressor"].is_file():
        export_face_regressor(weights / "mb05_120x120.pth", paths["regressor"])
    if not paths["graph"].is_file():
        export_detector_graph(weights / "FaceBoxesProd.pth", paths["graph"], PipelineConfig())
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="distinct 720p frames")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the frames")
    parser.add_argument("--video", type=Path, default=_common.default_video())
    parser.add_argument("--no-results", action="store_true", help="do not append RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import onnxruntime as ort

    from tddfa import detection, preprocess
    from tddfa.config import PipelineConfig
    from tddfa.detector import Detector
    from tddfa.face_slots import run_filled_slots
    from tddfa.roi import crop_and_resize, roi_from_box
    from tddfa.runners import make_runner

    asset_dir = args.video.parent.parent
    paths = _models(asset_dir)
    cfg = PipelineConfig()
    network = make_runner(paths["network"].parent, "cpu")
    regressor = make_runner(paths["regressor"].parent, "cpu")
    graph = ort.InferenceSession(str(paths["graph"]), providers=["CPUExecutionProvider"])
    detector = Detector(cfg, network)
    frames = _common.read_frames(args.video, args.frames)

    def detector_before(frame):
        canvas, scale = preprocess.to_detector_canvas(frame, cfg)
        out = network.run({"DETECTOR_INPUT": canvas[None]})
        return detection.select_faces(out["LOC"][0], out["CONF"][0], detector.priors, scale, cfg)

    # one real face crop per frame, in a K-slot tensor
    crops = []
    for frame in frames[: min(8, len(frames))]:
        boxes, counts = detector(frame[None])
        rois = roi_from_box(boxes[0, :, :4])
        rois[int(counts[0]) :] = 0
        crops.append(crop_and_resize(frame, rois, count=int(counts[0]))[None])
    one_face = np.array([[1]], np.int32)

    cases = {
        "preprocess before (numpy)": lambda f, i: preprocess.to_detector_canvas(f, cfg),
        "preprocess after (OpenCV)": lambda f, i: detector.preprocess(f[None]),
        "detector before (3 steps)": lambda f, i: detector_before(f),
        "detector after (Detector)": lambda f, i: detector(f[None]),
        "detector graph (onnxruntime)": lambda f, i: graph.run(None, {"IMAGE": f[None]}),
        "regressor before (K=8 slots)": lambda f, i: regressor.run(
            {"CROPS": crops[i % len(crops)]}
        ),
        "regressor after (1 face)": lambda f, i: run_filled_slots(
            regressor, {"CROPS": crops[i % len(crops)]}, one_face
        ),
    }
    for fn in cases.values():  # warm up
        fn(frames[0], 0)
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    step = 0
    for _ in range(args.repeats):
        for i, frame in enumerate(frames):
            step += 1
            for name in names[step % len(names) :] + names[: step % len(names)]:
                start = time.perf_counter()
                cases[name](frame, i)
                times[name].append((time.perf_counter() - start) * 1e3)
    rows = []
    for name, values in times.items():
        values.sort()
        rows.append(
            [name, f"{statistics.median(values):.2f}", f"{values[len(values) // 10]:.2f}",
             f"{values[int(0.9 * len(values))]:.2f}", len(values)]
        )  # fmt: skip
    header = ["case", "median ms", "p10 ms", "p90 ms", "samples"]
    table = _common.format_table(header, rows)
    print(table)
    if not args.no_results:
        _common.append_results(
            "(e) detector and regressor on the CPU, before/after tddfa.detector",
            table,
            [
                f"{len(frames)} distinct 1280x720 frames of {args.video.name} (one face), "
                f"{args.repeats} passes, cases interleaved per frame in rotating order",
                f"onnxruntime {ort.__version__}, default threads; "
                f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
                "models exported to build/bench/detector_models (FaceBoxesProd, mb05)",
                "wall-clock median / p10 / p90 ms per call; they inflate when other jobs "
                "share the cores: compare cases within one block",
            ],
        )


if __name__ == "__main__":
    main()
