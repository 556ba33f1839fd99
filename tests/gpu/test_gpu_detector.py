"""tddfa.detector.Detector on the GPU: fused canvas kernel, FaceBoxes (PyTorch CUDA, fp32),
the one-kernel selection (tddfa.gpu_detection); CuPy in, CuPy out, the same faces as the CPU.

No onnxruntime or OpenCV is needed on the device: the CPU side of the comparisons is the
numpy canvas (equal to OpenCV's on these frames, tests/unit/test_detector.py) and the same
PyTorch network on the CPU."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tddfa import detection, preprocess
from tddfa.config import PipelineConfig
from tddfa.detector import Detector
from tddfa.priors import prior_boxes

CFG = PipelineConfig()


class _TorchCpuRunner:
    """FaceBoxes on the CPU in PyTorch (the CPU side of the comparisons)."""

    input_names, output_names = ["DETECTOR_INPUT"], ["LOC", "CONF"]

    def __init__(self, module):
        self.module = module

    def run(self, inputs):
        import torch

        with torch.inference_mode():
            loc, conf = self.module(torch.from_numpy(np.asarray(inputs["DETECTOR_INPUT"])))
        return {"LOC": loc.numpy(), "CONF": conf.numpy()}


@pytest.fixture(scope="module")
def network(asset_dir):
    from tddfa.networks.faceboxes import FaceDetectorGraph, load_faceboxes

    return FaceDetectorGraph(load_faceboxes(asset_dir / "3ddfa_v2" / "FaceBoxesProd.pth")).eval()


@pytest.fixture(scope="module")
def gpu_detector(network):
    import copy

    from tddfa.runners import TorchCudaRunner

    runner = TorchCudaRunner(
        copy.deepcopy(network), ["DETECTOR_INPUT"], ["LOC", "CONF"], "cuda:0", fp16=False,
        cuda_graphs=True,
    )  # fmt: skip
    return Detector(CFG, runner)


@pytest.fixture(scope="module")
def cpu_runner(network):
    return _TorchCpuRunner(network)


def _cpu_faces(runner, image, cfg=CFG):
    """numpy canvas + CPU network + per-frame selection."""
    canvas, scale = preprocess.to_detector_canvas(image, cfg)
    out = runner.run({"DETECTOR_INPUT": canvas[None]})
    priors = prior_boxes(cfg.canvas_height, cfg.canvas_width)
    return detection.select_faces(out["LOC"][0], out["CONF"][0], priors, scale, cfg)


@pytest.fixture(scope="module")
def frames(test_images, asset_dir):
    """The test photos, a 1280x720 and a 640x360 frame made from them, and video frames
    when PyAV is installed."""
    from PIL import Image

    out = dict(test_images)
    for name, size in (("trump_hillary.jpg", (1280, 720)), ("JianzhuGuo.jpg", (640, 360))):
        resized = Image.fromarray(test_images[name]).resize(size, Image.BILINEAR)
        out[f"{name}@{size[0]}x{size[1]}"] = np.asarray(resized)
    try:
        import av
    except ImportError:
        return out
    for video in ("emma720.mp4", "two_faces_360p.mp4"):
        with av.open(str(asset_dir / "video" / video)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i % 50 == 0:
                    out[f"{video}#{i}"] = frame.to_ndarray(format="rgb24")
                if i >= 100:
                    break
    return out


# ---- the selection kernel -----------------------------------------------------------------


def _random_detections(rng, batch, priors):
    loc = rng.normal(0, 0.3, (batch, len(priors), 4)).astype(np.float32)
    score = rng.uniform(0, 0.3, (batch, len(priors))).astype(np.float32)
    for b in range(batch - 1):
        for _ in range(10):
            near = np.abs(priors[:, :2] - rng.uniform(0, 1, 2)).max(axis=1) < 0.06
            score[b, near] = rng.uniform(0.4, 1.0, near.sum())
    score[0, 11] = score[0, 17] = 0.875  # a tie: the lower index first
    return loc, np.stack([1 - score, score], axis=-1).astype(np.float32)


@pytest.mark.parametrize(
    "cfg",
    [CFG, PipelineConfig(max_faces=3), PipelineConfig(pre_nms_top_k=50),
     PipelineConfig(nms_iou_threshold=0.6, post_nms_top_k=4)],
    ids=["default", "k3", "pre-nms-cap", "iou0.6-post4"],
)  # fmt: skip
def test_selection_kernel_is_bit_equal_to_numpy(cfg):
    import cupy

    from tddfa.gpu_detection import FaceSelector

    priors = prior_boxes(cfg.canvas_height, cfg.canvas_width)
    loc, conf = _random_detections(np.random.default_rng(cfg.max_faces), 4, priors)
    boxes, counts = FaceSelector(cfg, priors)(cupy.asarray(loc), cupy.asarray(conf), 0.61)
    assert isinstance(boxes, cupy.ndarray) and boxes.shape == (4, cfg.max_faces, 5)
    assert counts.dtype == cupy.int32 and int(counts[-1]) == 0
    want, want_counts = detection.select_faces_per_frame(loc, conf, priors, 0.61, cfg)
    np.testing.assert_array_equal(cupy.asnumpy(boxes), want)  # bit for bit
    np.testing.assert_array_equal(cupy.asnumpy(counts), want_counts)
    # the fallback (kernels that fail to compile) takes CuPy in and gives CuPy out
    fallback = detection.select_faces_per_frame(
        cupy.asarray(loc), cupy.asarray(conf), priors, 0.61, cfg
    )
    assert isinstance(fallback[0], cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(fallback[0]), want)


def test_selection_kernel_on_the_reference_outputs(reference_dir):
    import cupy

    from tddfa.gpu_detection import FaceSelector

    raw = np.load(reference_dir / "emma_faceboxes_raw.npz")
    size = tuple(int(d) for d in raw["input_shape"][2:])
    priors = prior_boxes(*size)
    selector = FaceSelector(CFG, priors, input_size=size)
    boxes, counts = selector(
        cupy.asarray(raw["loc"]), cupy.asarray(raw["conf"]), float(raw["scale"])
    )
    want, count = detection.select_faces(
        raw["loc"][0], raw["conf"][0], priors, float(raw["scale"]), CFG, size
    )
    assert int(counts[0]) == count == 3
    np.testing.assert_array_equal(cupy.asnumpy(boxes[0]), want)


# ---- the whole Detector -------------------------------------------------------------------


def test_gpu_detector_matches_the_original(gpu_detector, test_images, reference_dir):
    import cupy

    reference = json.loads((reference_dir / "emma.json").read_text())
    images = cupy.asarray(test_images["emma.jpg"][None])
    gpu_detector.validate(images)
    boxes, counts = gpu_detector(images)
    assert isinstance(boxes, cupy.ndarray) and isinstance(counts, cupy.ndarray)
    expected = np.array([f["box"] + [f["score"]] for f in reference["faces"]], np.float32)
    boxes = cupy.asnumpy(boxes)
    assert int(counts[0]) == 3
    assert np.abs(boxes[0, :3, :4] - expected[:, :4]).max() <= 1.0
    assert np.abs(boxes[0, :3, 4] - expected[:, 4]).max() <= 1e-3


def test_gpu_detector_equals_the_cpu_path(gpu_detector, cpu_runner, frames):
    """Canvas bit-equal; on the same network outputs the faces bit-equal; end to end (GPU vs
    CPU convolutions) the same counts, boxes within 1 px, scores within 1e-3."""
    import cupy

    for name, image in frames.items():
        images = cupy.asarray(np.stack([image, image[:, ::-1]]))
        canvases, scale = gpu_detector.preprocess(images)
        want_canvas, want_scale = preprocess.to_detector_canvas(image, CFG)
        assert scale == want_scale
        np.testing.assert_array_equal(cupy.asnumpy(canvases[0]), want_canvas, err_msg=name)
        outputs = gpu_detector.runner.run({"DETECTOR_INPUT": canvases})
        boxes, counts = gpu_detector._select_gpu(outputs["LOC"], outputs["CONF"], scale)
        loc, conf = cupy.asnumpy(outputs["LOC"]), cupy.asnumpy(outputs["CONF"])
        for b in range(2):
            same_input, count = detection.select_faces(
                loc[b], conf[b], gpu_detector.priors, scale, CFG
            )
            assert int(counts[b]) == count, name
            np.testing.assert_array_equal(cupy.asnumpy(boxes[b]), same_input, err_msg=name)
        end_to_end, end_counts = gpu_detector(images)
        cpu, cpu_count = _cpu_faces(cpu_runner, image)
        assert int(end_counts[0]) == cpu_count, name
        n = cpu_count
        got = cupy.asnumpy(end_to_end[0])
        assert np.abs(got[:n, :4] - cpu[:n, :4]).max(initial=0) <= 1.0, name
        assert np.abs(got[:n, 4] - cpu[:n, 4]).max(initial=0) <= 1e-3, name
        assert not got[n:].any()


def test_gpu_detector_has_no_torch_sync_and_keeps_cupy(gpu_detector, frames):
    """The batch stays on the device: no synchronising PyTorch op (sync debug mode), CuPy
    results (no host arrays)."""
    import cupy
    import torch

    images = cupy.asarray(np.stack([frames["trump_hillary.jpg@1280x720"]] * 4))
    gpu_detector(images)  # warm up: kernels compiled, CUDA graph captured
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            boxes, counts = gpu_detector(images)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert not syncs, syncs
    assert isinstance(boxes, cupy.ndarray) and boxes.shape == (4, CFG.max_faces, 5)
    assert cupy.asnumpy(counts).tolist() == [int(counts[0])] * 4


def test_generic_cupy_fallback_gives_the_same_faces(network, frames):
    import copy

    import cupy

    from tddfa.runners import TorchCudaRunner

    runner = TorchCudaRunner(
        copy.deepcopy(network), ["DETECTOR_INPUT"], ["LOC", "CONF"], "cuda:0", fp16=False
    )
    fused, generic = Detector(CFG, runner), Detector(CFG, runner)
    generic._gpu_kernels_failed = True  # as after a kernel failed to compile
    images = cupy.asarray(frames["emma.jpg"][None])
    for a, b in zip(fused(images), generic(images), strict=True):
        np.testing.assert_array_equal(cupy.asnumpy(a), cupy.asnumpy(b))


def test_zero_faces_and_k_faces(gpu_detector, test_images):
    import cupy

    blank = cupy.zeros((2, 480, 640, 3), cupy.uint8)
    boxes, counts = gpu_detector(blank)
    assert cupy.asnumpy(counts).tolist() == [0, 0] and not cupy.asnumpy(boxes).any()
    two = Detector(PipelineConfig(max_faces=2), gpu_detector.runner)
    boxes, counts = two(cupy.asarray(test_images["emma.jpg"][None]))
    full, _ = gpu_detector(cupy.asarray(test_images["emma.jpg"][None]))
    assert int(counts[0]) == 2
    np.testing.assert_array_equal(cupy.asnumpy(boxes[0]), cupy.asnumpy(full[0, :2]))
