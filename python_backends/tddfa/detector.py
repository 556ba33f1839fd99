"""The face detector as one object: frames in, the K best faces of each frame out.

:class:`Detector` runs everything between a frame and its face boxes (docs/models.md 1):

1. validation (the errors of :mod:`tddfa.preprocess`: they name the fix);
2. the original's rescale rule, then the frame in the top-left corner of the fixed
   detector canvas, the rest the detector's mean colour;
3. FaceBoxes through a runner of :mod:`tddfa.runners` (``DETECTOR_INPUT`` -> ``LOC``, ``CONF``);
4. prior decoding, the score threshold, greedy NMS and the top K.

On the CPU (numpy frames) step 2 is OpenCV's ``cv2.resize`` (INTER_LINEAR: what the
original calls, so the canvas is the reference's bit for bit) and step 4 is
:func:`tddfa.detection.select_faces` per frame. On the GPU (CuPy frames) step 2 is the fused
canvas kernel of :mod:`tddfa.gpu_kernels` and step 4 the selection kernel of
:mod:`tddfa.gpu_detection`: no host round trip and no host synchronisation, CuPy in and
CuPy out. Both devices give the same boxes for the same network outputs.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tddfa import detection, preprocess
from tddfa.config import PipelineConfig
from tddfa.priors import prior_boxes
from tddfa.runners import NETWORK_IO
from tddfa.xp import get_xp

LOG = logging.getLogger(__name__)

# the runner's input (B, 3, Hc, Wc) float32 RGB 0..255 -> (B, P, 4) offsets, (B, P, 2) scores
(DETECTOR_INPUT,), DETECTOR_OUTPUTS = NETWORK_IO["face_detector"]


def validate_frames(images: Any, config: PipelineConfig) -> None:
    """Check a batch of frames for the detector; raise ValueError naming the problem and the fix.

    Args:
        images: (B, H, W, 3) uint8 RGB, numpy or CuPy, B >= 1 (frames of one size).
        config: the image size limits.
    """
    if not hasattr(images, "ndim") or images.ndim != 4:
        shape = tuple(getattr(images, "shape", ()))
        raise ValueError(
            f"IMAGE must be uint8 (H, W, 3) RGB frames with a batch axis, got "
            f"{getattr(images, 'dtype', type(images).__name__)} {shape}: send one frame "
            "as shape (1, H, W, 3)"
        )
    if images.shape[0] == 0:
        raise ValueError("IMAGE holds no frame (batch of 0): send at least one frame")
    # the frames of a batch share dtype and shape: checking the first checks them all
    preprocess.validate_image(images[0], config)


class Detector:
    """Frames -> the K best faces of each frame (K = ``config.max_faces``).

    Args:
        config: canvas size, rescale rule, thresholds, K, image size limits.
        runner: FaceBoxes on the canvas: ``runner.run({"DETECTOR_INPUT": (B, 3, Hc, Wc)
            float32 RGB 0..255})`` -> ``{"LOC": (B, P, 4), "CONF": (B, P, 2)}`` (a
            :mod:`tddfa.runners` runner of the ``face_detector`` network). For CuPy frames it
            must take and return device arrays (TensorRT or PyTorch CUDA runner).

    Usage::

        detector = Detector(PipelineConfig(), make_runner(".../face_detector/1", "cpu"))
        detector.validate(images)           # ValueError naming the fix
        boxes, counts = detector(images)    # (B, K, 5) float32, (B,) int32
    """

    def __init__(self, config: PipelineConfig, runner: Any):
        self.config = config
        self.runner = runner
        self.priors = prior_boxes(config.canvas_height, config.canvas_width)
        self._selector = None  # tddfa.gpu_detection.FaceSelector, made on first GPU call
        self._gpu_kernels_failed = False

    # ------------------------------------------------------------------ validation

    def validate(self, images: Any) -> None:
        """Check a batch of frames; raise ValueError naming the problem and the fix
        (:func:`validate_frames`)."""
        validate_frames(images, self.config)

    # ------------------------------------------------------------------ the steps

    def preprocess(self, images: Any) -> tuple[Any, float]:
        """Frames -> detector canvases.

        Args:
            images: (B, H, W, 3) uint8 RGB (validated), numpy or CuPy.

        Returns:
            ``(canvases, scale)``: (B, 3, Hc, Wc) float32 RGB 0..255 on the frames' device,
            the rescaled frame top-left and the detector mean elsewhere; ``scale`` the
            factor the frames were rescaled by (boxes are divided by it).
        """
        xp = get_xp(images)
        if xp is not np:
            return self._canvas_gpu(images)
        return _canvas_cpu(images, self.config)

    def __call__(self, images: Any) -> tuple[Any, Any]:
        """Detect the faces of a batch of frames.

        Args:
            images: (B, H, W, 3) uint8 RGB frames of one size, numpy or CuPy (call
                :meth:`validate` first for a message that names the fix).

        Returns:
            ``(boxes, counts)`` on the frames' array module: boxes (B, K, 5) float32
            (x1, y1, x2, y2, score) in image pixels, best first, rows past the count zero;
            counts (B,) int32 faces per frame (0 .. K).
        """
        xp = get_xp(images)
        canvases, scale = self.preprocess(images)
        outputs = self.runner.run({DETECTOR_INPUT: canvases})
        loc, conf = (xp.asarray(outputs[name]) for name in DETECTOR_OUTPUTS)
        if xp is not np:
            return self._select_gpu(loc, conf, scale)
        return detection.select_faces_per_frame(loc, conf, self.priors, scale, self.config)

    # ------------------------------------------------------------------ GPU helpers

    def face_scores(self, crops: Any) -> Any:
        """The best face score in each of (N, 3, S, S) float32 RGB 0..255 crops -> (N,).

        The sequence tracker's check that a tracked crop still holds a face: FaceBoxes on the
        regressor's own 120x120 crops costs about 2 % of a full-frame detection."""
        xp = get_xp(crops)
        if crops.shape[0] == 0:
            return xp.zeros(0, xp.float32)
        conf = self.runner.run({DETECTOR_INPUT: crops})["CONF"]
        return conf[:, :, 1].max(axis=1)

    def _disable_gpu_kernels(self, exc: Exception) -> None:
        LOG.warning(
            "fused GPU detector kernels unavailable (%r): generic CuPy canvas, host selection", exc
        )
        self._gpu_kernels_failed = True

    def _canvas_gpu(self, images: Any) -> tuple[Any, float]:
        if not self._gpu_kernels_failed:
            from tddfa import gpu_kernels

            try:
                return gpu_kernels.detector_canvas(images, self.config)
            except Exception as exc:  # noqa: BLE001 - a kernel that fails to compile
                self._disable_gpu_kernels(exc)
        xp = get_xp(images)
        canvases = [preprocess.to_detector_canvas(frame, self.config) for frame in images]
        return xp.stack([c for c, _ in canvases]), canvases[0][1]

    def _select_gpu(self, loc: Any, conf: Any, scale: float) -> tuple[Any, Any]:
        if self._selector is None:
            from tddfa.gpu_detection import FaceSelector

            self._selector = FaceSelector(self.config, self.priors)
        if not self._gpu_kernels_failed:
            try:
                return self._selector(loc, conf, scale)
            except ValueError:
                raise
            except Exception as exc:  # noqa: BLE001 - a kernel that fails to compile
                self._disable_gpu_kernels(exc)
        # the CPU definition, through the host: slower, the same faces
        return detection.select_faces_per_frame(loc, conf, self.priors, scale, self.config)


def _canvas_cpu(images: np.ndarray, cfg: PipelineConfig) -> tuple[np.ndarray, float]:
    """The CPU canvas: ``cv2.resize`` (INTER_LINEAR, truncated size, as the original) per
    frame, its channels copied into a float32 canvas padded with the detector mean."""
    import cv2

    batch, height, width = (int(d) for d in images.shape[:3])
    scale = preprocess.detector_scale(height, width, cfg)
    out_h, out_w = preprocess.resized_size(height, width, scale)
    canvas = np.empty((batch, 3, cfg.canvas_height, cfg.canvas_width), np.float32)
    for c, mean in enumerate(preprocess.DETECTOR_MEAN_RGB):
        canvas[:, c, out_h:, :] = mean
        canvas[:, c, :out_h, out_w:] = mean
    for b in range(batch):
        frame = np.ascontiguousarray(images[b])
        if (out_h, out_w) != (height, width):
            frame = cv2.resize(frame, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        for c, channel in enumerate(cv2.split(frame)):
            canvas[b, c, :out_h, :out_w] = channel
    return canvas, scale
