"""FaceBoxes post-processing: decode, score filter, greedy NMS, top-K (docs/models.md 1).

Two forms of the same selection:

- :func:`select_faces`: one frame, the candidates above the threshold gathered first, NMS
  on the host (numpy) over those few: the fastest form on the CPU.
- :func:`select_faces_batch`: a batch of frames with static shapes and no data-dependent
  indexing (no host synchronisation on CuPy): greedy NMS as ``max_faces`` rounds of
  "take the best live candidate, suppress its overlaps". It is the reference of the fused
  CUDA kernel (:mod:`tddfa.gpu_detection`) and its fallback.

Both give the same boxes bit for bit (float32 arithmetic in the same order; the ``exp`` of
the size decoding is evaluated in float64 and rounded, so that numpy, CuPy and CUDA agree).
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


def candidate_keys(scores: Any, threshold: float, max_candidates: int) -> Any:
    """Sort keys of the NMS candidates: one uint64 per prior, 0 for a non-candidate.

    A candidate has score > ``threshold`` (float32 comparison) and is among the best
    ``max_candidates`` of them. Its key is ``score bits << 32 | (2**32 - 1 - index)``: keys
    order candidates by descending score, ties by ascending prior index (the order of a
    stable sort), and are unique, so "the best live candidate" is one ``argmax``.

    Args:
        scores: (B, P) float32 face scores (non-negative), numpy or cupy.
        threshold: candidates score strictly above it.
        max_candidates: keep at most this many per frame (``pre_nms_top_k``).

    Returns:
        (B, P) uint64 keys on the array module of ``scores``.
    """
    xp = get_xp(scores)
    scores = xp.ascontiguousarray(scores, dtype=xp.float32)
    count = scores.shape[-1]
    bits = scores.view(xp.uint32).astype(xp.uint64) << xp.uint64(32)
    rank = xp.uint64(0xFFFFFFFF) - xp.arange(count, dtype=xp.uint64)
    keys = xp.where(scores > xp.float32(threshold), bits | rank, xp.uint64(0))
    if count > max_candidates:  # the max_candidates-th largest key is the cut-off
        cutoff = xp.sort(keys, axis=-1)[..., count - max_candidates]
        keys = xp.where(keys >= cutoff[..., None], keys, xp.uint64(0))
    return keys


def select_faces_batch(
    loc: Any,
    conf: Any,
    priors: Any,
    scale: float,
    cfg: PipelineConfig,
    input_size: tuple[int, int] | None = None,
) -> tuple[Any, Any]:
    """:func:`select_faces` for a batch, with static shapes and no host synchronisation.

    Greedy NMS as ``min(max_faces, post_nms_top_k)`` rounds over all priors at once: take
    each frame's live candidate with the largest key (:func:`candidate_keys`), report it,
    suppress the live candidates whose IoU (+1-pixel convention) with it is
    >= ``nms_iou_threshold``. The same boxes as the sorted greedy NMS of :func:`nms`.

    Args:
        loc: (B, P, 4) float32 detector offsets, numpy or cupy.
        conf: (B, P, 2) float32 softmaxed scores; column 1 is "face".
        priors: (P, 4) float32 priors (same array module as ``loc``).
        scale: rescale factor of the frames (all frames of a batch share their size).
        cfg: thresholds, limits and K (``max_faces``).
        input_size: (height, width) the priors were made for; default the canvas.

    Returns:
        ``(boxes, counts)``: boxes (B, K, 5) float32 (x1, y1, x2, y2, score) in original
        image pixels, best first, rows >= count zero; counts (B,) int32.
    """
    xp = get_xp(loc)
    if input_size is None:
        input_size = (cfg.canvas_height, cfg.canvas_width)
    _check_prior_count(loc, conf, priors, axis=1)
    batch = loc.shape[0]
    scores = conf[..., 1].astype(xp.float32)
    threshold = max(cfg.pre_nms_threshold, cfg.score_threshold)
    keys = candidate_keys(scores, threshold, cfg.pre_nms_top_k)
    boxes = decode_boxes(loc, priors, input_size, scale)  # (B, P, 4)
    one = xp.float32(1)
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    rows = xp.arange(batch)
    out = xp.zeros((batch, cfg.max_faces, 5), dtype=xp.float32)
    counts = xp.zeros(batch, dtype=xp.int32)
    for k in range(min(cfg.max_faces, cfg.post_nms_top_k)):
        best = keys.argmax(axis=1)
        found = keys[rows, best] > 0
        box = boxes[rows, best]  # (B, 4)
        out[:, k, :4] = xp.where(found[:, None], box, xp.float32(0))
        out[:, k, 4] = xp.where(found, scores[rows, best], xp.float32(0))
        counts += found.astype(xp.int32)
        width = xp.maximum(
            xp.minimum(box[:, 2:3], x2) - xp.maximum(box[:, 0:1], x1) + one, xp.float32(0)
        )
        height = xp.maximum(
            xp.minimum(box[:, 3:4], y2) - xp.maximum(box[:, 1:2], y1) + one, xp.float32(0)
        )
        inter = width * height
        iou = inter / (areas[rows, best][:, None] + areas - inter)
        suppressed = iou.astype(xp.float64) >= cfg.nms_iou_threshold
        keys = xp.where(suppressed, xp.uint64(0), keys)
        keys[rows, best] = 0
    return out, counts
