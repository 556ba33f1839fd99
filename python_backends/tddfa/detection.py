"""FaceBoxes post-processing: decode, score filter, greedy NMS, top-K (docs/models.md 1).

:func:`select_faces` is THE definition of face selection: one frame, the candidates above
the threshold gathered first, greedy NMS on the host over those few. Each flavour has one
implementation of it, tested against this one on the same detector outputs:

- CPU (python flavour): this module (:func:`select_faces_per_frame` for a batch);
- GPU (python flavour): one CUDA kernel for the batch, :mod:`tddfa.gpu_detection`
  (tests/unit/test_gpu_detection_host.py compiles it for the host, tests/gpu runs it),
  bit for bit;
- onnxruntime / tensorrt flavours: the ONNX graph of ``tddfa_tools.build.detector_graph``
  (tests/unit/test_detector_graph.py), within float32 rounding of the box coordinates.

Arithmetic is float32 in a fixed order; the ``exp`` of the size decoding is evaluated in
float64 and rounded, so that numpy and CUDA agree bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tddfa.config import DETECTOR_VARIANCES, PipelineConfig
from tddfa.xp import get_xp, to_numpy


def decode_boxes(loc: Any, priors: Any, input_size: tuple[int, int], scale: float = 1.0) -> Any:
    """Turn regression offsets into corner boxes in original image pixels.

    Args:
        loc: (..., P, 4) float32 offsets (dx, dy, dw, dh) from the detector.
        priors: (P, 4) float32 (cx, cy, w, h) normalised by the detector input size.
        input_size: (height, width) of the detector input the priors were made for.
        scale: the factor the frame was rescaled by before detection.

    Returns:
        (..., P, 4) float32 (x1, y1, x2, y2) = decoded corners * input size / scale.
        Every operation is float32 except ``exp``, computed in float64 and rounded to
        float32 (correctly rounded, hence the same on every device).
    """
    xp = get_xp(loc)
    loc = loc.astype(xp.float32, copy=False)
    priors = priors.astype(xp.float32, copy=False)
    centre_var, size_var = (xp.float32(v) for v in DETECTOR_VARIANCES)
    centre = priors[..., :2] + loc[..., :2] * centre_var * priors[..., 2:]
    growth = xp.exp((loc[..., 2:] * size_var).astype(xp.float64)).astype(xp.float32)
    size = priors[..., 2:] * growth
    top_left = centre - size / 2
    corners = xp.concatenate([top_left, top_left + size], axis=-1)
    height, width = input_size
    to_pixels = xp.asarray([width, height, width, height], dtype=xp.float32)
    return (corners * to_pixels / xp.float32(scale)).astype(xp.float32, copy=False)


def nms(boxes: Any, scores: Any, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression of the classic CPU implementation.

    Boxes are taken in descending score order (ties: lower index first); each kept box
    suppresses the later boxes whose IoU with it is >= ``iou_threshold``, where areas
    and intersections count pixels inclusively: (x2 - x1 + 1) * (y2 - y1 + 1).
    Arithmetic is float32 like the original.

    Args:
        boxes: (N, 4) (x1, y1, x2, y2), numpy or cupy (copied to the host).
        scores: (N,) scores.
        iou_threshold: suppression threshold.
        max_keep: stop after this many kept boxes (None: no limit).

    Returns:
        (M,) int64 numpy indices into ``boxes`` of the kept boxes, best first.
    """
    boxes = to_numpy(boxes).astype(np.float32, copy=False).reshape(-1, 4)
    scores = to_numpy(scores).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    one = np.float32(1)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    limit = len(order) if max_keep is None else max_keep
    keep = []
    while order.size > 0 and len(keep) < limit:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + one, 0)
        height = np.maximum(
            np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + one, 0
        )
        inter = width * height
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou.astype(np.float64) < iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _check_prior_count(loc: Any, conf: Any, priors: Any, axis: int) -> None:
    if loc.shape[axis] != priors.shape[0] or conf.shape[axis] != priors.shape[0]:
        raise ValueError(
            f"LOC {tuple(loc.shape)}, CONF {tuple(conf.shape)} and priors "
            f"{tuple(priors.shape)} disagree on the number of priors: build the priors "
            "for the detector input size"
        )


def select_faces(
    loc: Any,
    conf: Any,
    priors: Any,
    scale: float,
    cfg: PipelineConfig,
    input_size: tuple[int, int] | None = None,
) -> tuple[Any, int]:
    """The K best faces of one frame, as the original post-processing reports them.

    Equivalent to the original order of operations (score > ``pre_nms_threshold``,
    best ``pre_nms_top_k``, NMS, first ``post_nms_top_k``, score > ``score_threshold``)
    followed by the first ``max_faces``; candidates at or below the final threshold
    are dropped before NMS since they can neither be reported nor suppress a
    better-scored box.

    Args:
        loc: (P, 4) float32 detector offsets, numpy or cupy.
        conf: (P, 2) float32 softmaxed scores; column 1 is "face".
        priors: (P, 4) float32 priors of the detector input (same module as ``loc``).
        scale: rescale factor of the frame (``to_detector_canvas``).
        cfg: thresholds, limits and K (``max_faces``).
        input_size: (height, width) the priors were made for; default the canvas.

    Returns:
        ``(boxes, count)``: boxes (K, 5) float32 (x1, y1, x2, y2, score) in original
        image pixels, best first, rows >= count zero; count the number of faces.
    """
    xp = get_xp(loc)
    if input_size is None:
        input_size = (cfg.canvas_height, cfg.canvas_width)
    _check_prior_count(loc, conf, priors, axis=0)
    out = xp.zeros((cfg.max_faces, 5), dtype=xp.float32)
    scores = conf[:, 1].astype(xp.float32, copy=False)
    threshold = max(cfg.pre_nms_threshold, cfg.score_threshold)
    candidates = xp.nonzero(scores > threshold)[0]
    if candidates.size == 0:
        return out, 0
    order = candidates[xp.argsort(-scores[candidates], kind="stable")][: cfg.pre_nms_top_k]
    boxes = decode_boxes(loc[order], priors[order], input_size, scale)
    cand_scores = scores[order]
    max_keep = min(cfg.max_faces, cfg.post_nms_top_k)
    keep = nms(boxes, cand_scores, cfg.nms_iou_threshold, max_keep)
    count = int(keep.size)
    if count:
        keep = xp.asarray(keep)
        out[:count, :4] = boxes[keep]
        out[:count, 4] = cand_scores[keep]
    return out, count


def select_faces_per_frame(
    loc: Any,
    conf: Any,
    priors: np.ndarray,
    scale: float,
    cfg: PipelineConfig,
    input_size: tuple[int, int] | None = None,
) -> tuple[Any, Any]:
    """:func:`select_faces` for each frame of a batch, on the host.

    Args:
        loc: (B, P, 4) float32 detector offsets, numpy or CuPy (copied to the host).
        conf: (B, P, 2) float32 softmaxed scores, numpy or CuPy.
        priors: (P, 4) float32 numpy priors.
        scale, cfg, input_size: as :func:`select_faces`.

    Returns:
        ``(boxes, counts)`` on the array module of ``loc``: boxes (B, K, 5) float32, rows past
        the count zero; counts (B,) int32.
    """
    xp = get_xp(loc)
    loc, conf = to_numpy(loc), to_numpy(conf)
    _check_prior_count(loc, conf, priors, axis=1)
    batch = loc.shape[0]
    boxes = np.zeros((batch, cfg.max_faces, 5), np.float32)
    counts = np.zeros(batch, np.int32)
    for b in range(batch):
        boxes[b], counts[b] = select_faces(loc[b], conf[b], priors, scale, cfg, input_size)
    return (boxes, counts) if xp is np else (xp.asarray(boxes), xp.asarray(counts))
