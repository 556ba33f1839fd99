"""Our exported networks, run by tddfa.runners (onnxruntime), against the original 3DDFA_V2.

Reference: ../shared/reference (README there), produced by the original PyTorch code.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="opencv is needed to rescale the reference image")

from tddfa.config import DETECTOR_MEAN_BGR, PipelineConfig  # noqa: E402
from tddfa.detection import select_faces  # noqa: E402
from tddfa.preprocess import detector_scale  # noqa: E402
from tddfa.priors import prior_boxes  # noqa: E402
from tddfa.runners import OnnxRuntimeRunner, make_runner, parse_device  # noqa: E402
from tddfa_tools.assets.safe_load import load_pickle  # noqa: E402
from tddfa_tools.build.export_onnx import relative_error  # noqa: E402

CFG = PipelineConfig()


def _model_dir(tmp_path_factory, onnx_path: Path) -> Path:
    """A Triton-style version folder holding only ``model.onnx``."""
    folder = tmp_path_factory.mktemp(onnx_path.stem)
    os.symlink(onnx_path, folder / "model.onnx")
    return folder


@pytest.fixture(scope="module")
def detector(onnx_models, tmp_path_factory):
    runner = make_runner(_model_dir(tmp_path_factory, onnx_models["face_detector"]), "cpu")
    assert isinstance(runner, OnnxRuntimeRunner)
    return runner


@pytest.fixture(scope="module")
def regressor(onnx_models, tmp_path_factory):
    return make_runner(_model_dir(tmp_path_factory, onnx_models["face_regressor"]), "cpu")


@pytest.fixture(scope="module")
def reference(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "emma.json").read_text())


def _rescaled_rgb(path: Path) -> tuple[np.ndarray, float]:
    """(3, h, w) float32 RGB 0..255 rescaled as the original FaceBoxes code does, and scale.

    The original resizes with ``cv2.resize(img, dsize=(int(w * s), int(h * s)))`` (bilinear,
    truncated size), not with fx/fy (which rounds: 525 rows instead of 524 for emma.jpg).
    """
    bgr = cv2.imread(str(path))
    height, width = bgr.shape[:2]
    scale = detector_scale(height, width, CFG)
    if scale != 1.0:
        bgr = cv2.resize(bgr, (int(width * scale), int(height * scale)))
    return np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32), scale


def _detect(runner, image: np.ndarray, scale: float) -> np.ndarray:
    """(3, H, W) RGB input -> (count, 5) detections in original pixels."""
    out = runner.run({"DETECTOR_INPUT": image[None]})
    height, width = image.shape[1:]
    boxes, count = select_faces(
        out["LOC"][0], out["CONF"][0], prior_boxes(height, width), scale, CFG, (height, width)
    )
    return boxes[:count]


def _padded(image: np.ndarray) -> np.ndarray:
    """``image`` in the top-left of the configured canvas, the rest the detector mean (RGB)."""
    canvas = np.empty((3, CFG.canvas_height, CFG.canvas_width), np.float32)
    canvas[...] = np.asarray(DETECTOR_MEAN_BGR[::-1], np.float32)[:, None, None]
    canvas[:, : image.shape[1], : image.shape[2]] = image
    return canvas


def test_detector_raw_outputs(detector, asset_dir, reference_dir):
    raw = np.load(reference_dir / "emma_faceboxes_raw.npz")
    image, scale = _rescaled_rgb(asset_dir / "images" / "emma.jpg")
    assert scale == pytest.approx(float(raw["scale"]), abs=1e-12)
    assert (1, *image.shape) == tuple(raw["input_shape"])
    out = detector.run({"DETECTOR_INPUT": image[None]})
    assert out["LOC"].shape == raw["loc"].shape and out["CONF"].shape == raw["conf"].shape
    # measured: loc max abs 2.4e-6 (rel 6e-7), conf max abs 2e-7
    assert np.abs(out["LOC"] - raw["loc"]).max() <= 1e-4
    assert relative_error(out["LOC"], raw["loc"]) <= 1e-5
    assert np.abs(out["CONF"] - raw["conf"]).max() <= 1e-5


def test_detections_match_reference(detector, asset_dir, reference):
    image, scale = _rescaled_rgb(asset_dir / reference["image"])
    dets = _detect(detector, image, scale)
    expected = np.array([f["box"] + [f["score"]] for f in reference["faces"]], np.float32)
    assert dets.shape == expected.shape
    assert np.abs(dets[:, :4] - expected[:, :4]).max() <= 1.0
    assert np.abs(dets[:, 4] - expected[:, 4]).max() <= 1e-3


@pytest.mark.parametrize("name", ["emma.jpg", "trump_hillary.jpg", "JianzhuGuo.jpg"])
def test_padded_canvas_gives_the_same_faces(detector, asset_dir, name):
    """The ensemble pads every frame to the canvas; the detections must not move (measured:
    at most 0.24 px in original pixels and 1.4e-6 in score, on emma.jpg's second face)."""
    image, scale = _rescaled_rgb(asset_dir / "images" / name)
    exact = _detect(detector, image, scale)
    padded = _detect(detector, _padded(image), scale)
    assert len(exact) > 0 and padded.shape == exact.shape
    assert np.abs(padded[:, :4] - exact[:, :4]).max() <= 1.0
    assert np.abs(padded[:, 4] - exact[:, 4]).max() <= 1e-3


def test_regressor_reference(regressor, asset_dir, reference_dir, reference):
    ref = np.load(reference_dir / "emma_face0_regressor.npz")
    # the reference input is BGR (x - 127.5) / 128: back to the graph's RGB 0..255
    crops = (ref["input"][:, ::-1] * 128 + 127.5).astype(np.float32)[None]  # (1, 1, 3, 120, 120)
    out = regressor.run({"CROPS": crops})["PARAMS_NORM"][0]
    expected = ref["output_normalised"]
    # measured: max abs 6.6e-7 on values up to 2.3
    assert relative_error(out, expected) <= 1e-5
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-5)
    mean_std = load_pickle(asset_dir / "3ddfa_v2" / "param_mean_std_62d_120x120.pkl")
    params = out[0] * mean_std["std"] + mean_std["mean"]
    np.testing.assert_allclose(params, reference["faces"][0]["params"], rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------------- runner choice


def test_make_runner_without_onnx(tmp_path):
    with pytest.raises(FileNotFoundError, match="tddfa build"):
        make_runner(tmp_path, "cpu")


def test_make_runner_cuda_falls_back_to_cpu(onnx_models, tmp_path_factory, caplog):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: no CPU fallback to test")
    folder = _model_dir(tmp_path_factory, onnx_models["face_regressor"])
    (folder / "model.plan").write_bytes(b"not an engine")  # ignored without tensorrt/CUDA
    with caplog.at_level(logging.INFO, logger="tddfa.runners"):
        runner = make_runner(folder, "cuda:0")
    if not isinstance(runner, OnnxRuntimeRunner):
        pytest.skip("a CUDA runner is available on this machine")
    assert runner.device == "cpu" and "running on the CPU" in caplog.text


def test_runner_reports_missing_inputs(regressor):
    assert regressor.input_names == ["CROPS"] and regressor.output_names == ["PARAMS_NORM"]
    with pytest.raises(ValueError, match="missing inputs"):
        regressor.run({"IMAGE": np.zeros((1, 1, 3, 120, 120), np.float32)})


@pytest.mark.parametrize(
    "device,expected", [("cpu", ("cpu", 0)), ("cuda", ("cuda", 0)), ("cuda:3", ("cuda", 3))]
)
def test_parse_device(device, expected):
    assert parse_device(device) == expected


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:1"])
def test_parse_device_rejects(device):
    with pytest.raises(ValueError, match="device must be"):
        parse_device(device)
