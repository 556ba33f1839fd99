"""Export the detector and the regressor to ONNX (opset 17) and check them with onnxruntime.

Graph I/O (fixed here, used by every config.pbtxt):
  face_detector : DETECTOR_INPUT float32 (N, 3, H, W) RGB 0..255 -> LOC (N, P, 4), CONF (N, P, 2)
                  (the network alone: the python flavour's runner, under tddfa.detector.Detector)
  face_detector (whole, :func:`export_detector_graph`, onnxruntime/tensorrt flavours):
                  IMAGE uint8 (N, H, W, 3) -> FACE_BOXES (N, K, 5), FACE_COUNT (N, 1) int32,
                  DETECTIONS, NUM_FACES (tools/build/detector_graph.py)
  face_regressor: CROPS float32 (N, K, 3, 120, 120) RGB 0..255 -> PARAMS_NORM (N, K, 62); the
                  face axis K is dynamic, so (1, F, ...) runs only F filled faces
The input is float32 (not uint8): the detector canvas is padded with the mean colour and the
crops come out of a bilinear resize, both float already. Each export is compared with the
PyTorch module on a random input (relative error <= 1e-5, else :class:`ExportError`) and
written atomically (temporary name, then rename).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tddfa.config import REGRESSOR_SIZE, PipelineConfig
from tddfa.files import atomic_path
from tddfa.runners import NETWORK_IO

LOG = logging.getLogger(__name__)

OPSET = 17
PARITY_RTOL = 1e-5
DETECTOR_INPUTS, DETECTOR_OUTPUTS = NETWORK_IO["face_detector"]
REGRESSOR_INPUTS, REGRESSOR_OUTPUTS = NETWORK_IO["face_regressor"]
# small shapes: the check is about the graph, not the canvas size; keep export quick
_DETECTOR_CHECK_SHAPE = (1, 3, 256, 320)
_REGRESSOR_CHECK_SHAPE = (2, 3, 3, REGRESSOR_SIZE, REGRESSOR_SIZE)


class ExportError(RuntimeError):
    """An exported graph disagrees with its PyTorch module."""


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (scale-aware; safe for near-zero entries)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ExportError(f"shape mismatch: got {actual.shape}, expected {expected.shape}")
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


def run_onnx(path: str | os.PathLike, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX file once on the CPU with onnxruntime; outputs in graph order."""
    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def check_parity(
    module, path: str | os.PathLike, input_name: str, x: np.ndarray, rtol: float = PARITY_RTOL
) -> list[float]:
    """Compare onnxruntime with ``module`` on ``x``; return each output's relative error.

    Raises :class:`ExportError` if any exceeds ``rtol``.
    """
    import torch

    with torch.no_grad():
        expected = module(torch.from_numpy(x))
    expected = expected if isinstance(expected, tuple | list) else (expected,)
    actual = run_onnx(path, {input_name: x})
    errors = [relative_error(a, e.numpy()) for a, e in zip(actual, expected, strict=True)]
    if max(errors) > rtol:
        raise ExportError(
            f"{path}: onnxruntime differs from PyTorch on input {x.shape}: relative errors "
            f"{errors} > {rtol}. Re-export with the same torch/onnx versions or report a bug."
        )
    return errors


def _infer_static_dims(path: Path) -> None:
    """Resolve output dims the tracer left symbolic (e.g. LOC's last dim, 4) in place."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(os.fspath(path)), data_prop=True)
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))


def _export(
    module,
    example: np.ndarray,
    out_path: str | os.PathLike,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> Path:
    """Trace ``module`` on ``example``, check parity, atomically write ``out_path``."""
    import torch

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        tmp_name = str(tmp)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter deprecation chatter
            torch.onnx.export(
                module,
                (torch.from_numpy(example),),
                tmp_name,
                dynamo=False,  # TorchScript exporter: deterministic, quick, named dynamic axes
                opset_version=OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        _infer_static_dims(tmp)
        errors = check_parity(module, tmp, input_names[0], example)
    LOG.info("exported %s (opset %d; onnxruntime rel. error %s)", out_path, OPSET, errors)
    return out_path


def _random_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=shape).astype(np.float32)


def export_face_detector(weights: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """``FaceBoxesProd.pth`` -> ``face_detector`` ONNX (dynamic N, H, W); returns the path."""
    from tddfa.networks.faceboxes import FaceDetectorGraph, load_faceboxes

    module = FaceDetectorGraph(load_faceboxes(weights)).eval()
    axes = {
        "DETECTOR_INPUT": {0: "batch", 2: "height", 3: "width"},
        "LOC": {0: "batch", 1: "priors"},
        "CONF": {0: "batch", 1: "priors"},
    }
    return _export(
        module,
        _random_input(_DETECTOR_CHECK_SHAPE),
        out_path,
        DETECTOR_INPUTS,
        DETECTOR_OUTPUTS,
        axes,
    )


def export_face_regressor(weights: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """``mb05_120x120.pth`` / ``mb1_120x120.pth`` -> ``face_regressor`` ONNX (dynamic N, K)."""
    from tddfa.networks.mobilenet_v1 import FaceRegressorGraph, load_mobilenet

    module = FaceRegressorGraph(load_mobilenet(weights)).eval()
    axes = {"CROPS": {0: "batch", 1: "faces"}, "PARAMS_NORM": {0: "batch", 1: "faces"}}
    return _export(
        module,
        _random_input(_REGRESSOR_CHECK_SHAPE),
        out_path,
        REGRESSOR_INPUTS,
        REGRESSOR_OUTPUTS,
        axes,
    )


def export_detector_graph(
    weights: str | os.PathLike, out_path: str | os.PathLike, cfg: PipelineConfig
) -> Path:
    """``FaceBoxesProd.pth`` -> the whole ``face_detector`` as one ONNX graph (frames in, the
    K best faces out; tools/build/detector_graph.py) for ``cfg``'s canvas, rule, thresholds and K.

    The network part is checked against PyTorch like the other exports; the whole graph is
    checked by ``onnx.checker`` and run once by onnxruntime on a small frame. Written
    atomically; returns the path.
    """
    import onnx

    from tddfa.networks.faceboxes import load_faceboxes
    from tddfa_tools.build.detector_graph import (
        FACE_BOXES,
        FACE_COUNT,
        NETWORK_INPUT,
        NETWORK_OUTPUTS,
        build_detector_graph,
    )

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    module = load_faceboxes(weights).eval()
    example = _random_input((1, 3, cfg.canvas_height, cfg.canvas_width)) - 117.0
    axes = {name: {0: "batch"} for name in (NETWORK_INPUT, *NETWORK_OUTPUTS)}
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        network = _export(
            module, example, Path(tmp) / "faceboxes.onnx", (NETWORK_INPUT,), NETWORK_OUTPUTS, axes
        )
        model = build_detector_graph(onnx.load(os.fspath(network)), cfg)
        whole = Path(tmp) / "face_detector.onnx"
        onnx.save(model, os.fspath(whole))
        frame = np.zeros((1, 48, 64, 3), np.uint8)
        boxes, count = run_onnx(whole, {"IMAGE": frame})[:2]
        if boxes.shape != (1, cfg.max_faces, 5) or count.shape != (1, 1) or count[0, 0] != 0:
            raise ExportError(
                f"{out_path}: the detector graph gave {FACE_BOXES} {boxes.shape}, "
                f"{FACE_COUNT} {count.tolist()} on a blank frame; expected "
                f"(1, {cfg.max_faces}, 5) and [[0]]"
            )
        os.chmod(whole, 0o644)
        os.replace(whole, out_path)
    LOG.info("exported %s (whole detector, K=%d, canvas %dx%d)", out_path, cfg.max_faces,
             cfg.canvas_height, cfg.canvas_width)  # fmt: skip
    return out_path
