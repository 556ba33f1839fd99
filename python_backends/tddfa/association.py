"""Boxes and matching for the tracker: which detection is which track.

Boxes are (x1, y1, x2, y2) image pixels. A tracked face's box is carried along with its
landmarks (:func:`box_relative_to` / :func:`box_from_landmarks`). Detections are assigned
to tracks by the Hungarian algorithm (scipy) on a cost that adds the overlap and, where a
track's identity is known, how different the two faces' shapes are (tddfa.identity).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

# A cost no assignment takes (a pair outside the gates).
FORBIDDEN = 1e6


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """(K, 3, 68) -> (K, 4) bounding boxes of the 2D landmarks."""
    xy = landmarks[:, :2]
    return np.concatenate([xy.min(axis=2), xy.max(axis=2)], axis=1)


def box_relative_to(box: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(4+,) box, (3, 68) landmarks -> (4,) the box's centre offset and size in units of
    the landmarks' bounding box (x and y separately)."""
    lx1, ly1, lx2, ly2 = landmark_box(landmarks[None])[0].astype(np.float64)
    size = np.maximum([lx2 - lx1, ly2 - ly1], 1e-6)
    centre = np.array([lx1 + lx2, ly1 + ly2]) / 2
    b = np.asarray(box[:4], np.float64)
    return np.concatenate(
        [
            (np.array([b[0] + b[2], b[1] + b[3]]) / 2 - centre) / size,
            np.array([b[2] - b[0], b[3] - b[1]]) / size,
        ]
    )


def box_from_landmarks(relative: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Inverse of :func:`box_relative_to` for new landmarks: (4,) float32 x1, y1, x2, y2."""
    lx1, ly1, lx2, ly2 = landmark_box(landmarks[None])[0].astype(np.float64)
    size = np.array([lx2 - lx1, ly2 - ly1])
    centre = np.array([lx1 + lx2, ly1 + ly2]) / 2 + relative[:2] * size
    half = relative[2:] * size / 2
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, 4+) x (N, 4+) boxes -> (M, N) intersection over union."""
    a, b = np.asarray(a, np.float64)[:, None, :4], np.asarray(b, np.float64)[None, :, :4]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def assign(cost: np.ndarray) -> dict[int, int]:
    """Minimum-cost one-to-one assignment of rows to columns, skipping forbidden pairs:
    {row: column}."""
    if cost.size == 0:
        return {}
    rows, cols = linear_sum_assignment(cost)
    return {int(r): int(c) for r, c in zip(rows, cols, strict=True) if cost[r, c] < FORBIDDEN}


def match_boxes(boxes: np.ndarray, others: np.ndarray, threshold: float) -> dict[int, int]:
    """Pairs of boxes that overlap by at least ``threshold`` IoU, the largest total overlap:
    {index in boxes: index in others}."""
    overlap = iou(boxes, others) if len(boxes) and len(others) else np.zeros((0, 0))
    return assign(np.where(overlap >= threshold, 1.0 - overlap, FORBIDDEN))


def match_identities(
    boxes: np.ndarray,
    predicted: np.ndarray,
    distances: np.ndarray,
    iou_threshold: float,
    max_distance: float | None,
) -> dict[int, int]:
    """Detections to tracks that were lost, by where each track was expected and who it is.

    Args:
        boxes: (M, 4+) the detections.
        predicted: (N, 4+) where each lost track was expected in this frame.
        distances: (M, N) identity distances (tddfa.identity) of detection to track.
        iou_threshold: a pair must overlap at least this much, or, with ``max_distance``,
            have centres within one box side of each other ...
        max_distance: ... and identities at most this far apart, up to three times as far
            for a detection right where the track was expected (a face still half hidden
            gives a poorer shape; a different face there is unlikely). None: overlap only.

    Returns:
        {detection index: track index}.
    """
    if not len(boxes) or not len(predicted):
        return {}
    distances = np.asarray(distances, np.float64)
    overlap = iou(boxes, predicted)
    if max_distance is None:
        return assign(np.where(overlap >= iou_threshold, 1.0 - overlap, FORBIDDEN))
    a, b = np.asarray(boxes, np.float64)[:, None, :4], np.asarray(predicted, np.float64)[None]
    centre_gap = np.linalg.norm(
        (a[..., :2] + a[..., 2:4]) / 2 - (b[..., :2] + b[..., 2:4]) / 2, axis=-1
    )
    side = np.maximum(b[..., 2] - b[..., 0], b[..., 3] - b[..., 1])
    near = (overlap >= iou_threshold) | (centre_gap <= side)
    allowed = near & (distances <= max_distance * (1.0 + 2.0 * overlap))
    return assign(np.where(allowed, distances / max_distance + (1.0 - overlap), FORBIDDEN))
