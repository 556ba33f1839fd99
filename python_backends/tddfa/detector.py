"""From frames to their K best face boxes: preprocess, FaceBoxes, decode, NMS, top-K.

One object for what the stateless ``face_detector`` model and the sequence model
``face_tracker`` both need (MODELS.md 1): the original's rescale rule and padding to the
fixed detector canvas, the network (a tddfa.runners runner), prior-box decoding, NMS and
the K best faces.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tddfa import detection, preprocess
from tddfa.config import PipelineConfig
from tddfa.priors import prior_boxes
from tddfa.xp import get_xp, to_numpy


class Detector:
    """``Detector(config, runner)(images) -> (boxes, counts)``.

    ``runner`` takes DETECTOR_INPUT (B, 3, canvas_h, canvas_w) float32 RGB 0..255 and
    gives LOC (B, P, 4) and CONF (B, P, 2).
    """

    def __init__(self, config: PipelineConfig, runner):
        self.config = config
        self.runner = runner
        self.priors = prior_boxes(config.canvas_height, config.canvas_width)
        self._device_priors: dict[Any, Any] = {}

    def validate(self, images: Any) -> None:
        """Raise ValueError naming the problem and the fix for a bad (B, H, W, 3) batch."""
        if images.ndim != 4:
            raise ValueError(
                f"IMAGE must be uint8 (H, W, 3) RGB with a batch axis, got {images.dtype} "
                f"{tuple(images.shape)}: send one frame as shape (1, H, W, 3)"
            )
        for frame in images:
            preprocess.validate_image(frame, self.config)

    def canvas(self, images: Any) -> tuple[Any, Any]:
        """(B,H,W,3) uint8 -> detector canvases (B,3,Hc,Wc) float32 and scales (B,)."""
        xp = get_xp(images)
        if xp is not np:
            from tddfa import gpu_kernels

            canvases, scale = gpu_kernels.detector_canvas(images, self.config)
            return canvases, np.full(len(images), scale, np.float32)
        canvases, scales = zip(
            *(preprocess.to_detector_canvas(frame, self.config) for frame in images), strict=True
        )
        return np.stack(canvases), np.asarray(scales, np.float32)

    def __call__(self, images: Any) -> tuple[Any, Any]:
        """Detect the faces of a batch of frames.

        Args:
            images: (B, H, W, 3) uint8 RGB frames of one size (validated).

        Returns:
            ``(boxes, counts)``: boxes (B, K, 5) float32 (x1, y1, x2, y2, score) in image
            pixels, best first, rows past the count zero; counts (B,) int32. Same array
            module as ``images``.
        """
        xp = get_xp(images)
        canvases, scales = self.canvas(images)
        raw = self.runner.run({"DETECTOR_INPUT": canvases})
        if xp is not np:
            return self._select_gpu(raw["LOC"], raw["CONF"], scales)
        boxes, counts = [], []
        for loc, conf, scale in zip(raw["LOC"], raw["CONF"], scales, strict=True):
            frame_boxes, count = detection.select_faces(
                loc, conf, self.priors, float(scale), self.config
            )
            boxes.append(frame_boxes)
            counts.append(count)
        return np.stack(boxes).astype(np.float32), np.asarray(counts, np.int32)

    def face_scores(self, crops: Any) -> Any:
        """The best face score in each of (N, 3, S, S) float32 RGB 0..255 crops -> (N,).

        The sequence tracker's check that a tracked crop still holds a face: FaceBoxes on the
        regressor's own 120x120 crops costs about 2 % of a full-frame detection."""
        xp = get_xp(crops)
        if crops.shape[0] == 0:
            return xp.zeros(0, xp.float32)
        conf = self.runner.run({"DETECTOR_INPUT": crops})["CONF"]
        return conf[:, :, 1].max(axis=1)

    def _select_gpu(self, loc: Any, conf: Any, scales: np.ndarray) -> tuple[Any, Any]:
        """The few candidates above the score threshold go to the host for NMS."""
        xp = get_xp(loc)
        cfg = self.config
        scores = conf[:, :, 1]
        threshold = max(cfg.pre_nms_threshold, cfg.score_threshold)
        frame_index, prior_index = xp.nonzero(scores > threshold)
        candidates = xp.concatenate(
            [loc[frame_index, prior_index], scores[frame_index, prior_index, None]], axis=1
        )
        candidates, frame_index, prior_index = (
            to_numpy(a) for a in (candidates, frame_index, prior_index)
        )
        batch = loc.shape[0]
        boxes = np.zeros((batch, cfg.max_faces, 5), np.float32)
        counts = np.zeros(batch, np.int32)
        for b in range(batch):
            rows = frame_index == b
            conf_b = np.zeros((int(rows.sum()), 2), np.float32)
            conf_b[:, 1] = candidates[rows, 4]
            boxes[b], counts[b] = detection.select_faces(
                candidates[rows, :4], conf_b, self.priors[prior_index[rows]], float(scales[b]), cfg
            )
        return xp.asarray(boxes), xp.asarray(counts)
