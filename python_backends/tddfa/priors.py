"""FaceBoxes prior boxes (anchors) for a detector input size, computed once per size."""

from __future__ import annotations

import functools
import math

import numpy as np

from tddfa.config import DETECTOR_MIN_SIZES, DETECTOR_STEPS

# Centre offsets (in cells) of the dense anchors: 4x4 for size 32, 2x2 for 64, else 1.
_DENSE_OFFSETS = {32: (0.0, 0.25, 0.5, 0.75), 64: (0.0, 0.5)}


def _cell_template(min_sizes: tuple[int, ...]) -> np.ndarray:
    """(A, 3) float64 rows (x offset, y offset, size) of one cell's anchors, in order."""
    rows = []
    for size in min_sizes:
        offsets = _DENSE_OFFSETS.get(size, (0.5,))
        for oy in offsets:  # rows (cy) outer, as the original iterates
            for ox in offsets:
                rows.append((ox, oy, float(size)))
    return np.asarray(rows, dtype=np.float64)


@functools.lru_cache(maxsize=8)
def prior_boxes(canvas_h: int, canvas_w: int) -> np.ndarray:
    """Priors of FaceBoxes for a ``canvas_h`` x ``canvas_w`` input (docs/models.md 1).

    Returns:
        (P, 4) float32 read-only numpy array of (cx, cy, w, h) normalised by the input
        size, in the order of the flattened detector heads. For a GPU path copy it to
        the device once (``cupy.asarray``) and keep that copy.
    """
    if canvas_h <= 0 or canvas_w <= 0:
        raise ValueError(f"detector input must be at least 1x1, got {canvas_h}x{canvas_w}")
    parts = []
    for step, min_sizes in zip(DETECTOR_STEPS, DETECTOR_MIN_SIZES, strict=True):
        rows, cols = math.ceil(canvas_h / step), math.ceil(canvas_w / step)
        template = _cell_template(min_sizes)  # (A, 3)
        i = np.arange(rows, dtype=np.float64)[:, None, None]
        j = np.arange(cols, dtype=np.float64)[None, :, None]
        shape = (rows, cols, len(template))
        cx = np.broadcast_to((j + template[:, 0]) * step / canvas_w, shape)
        cy = np.broadcast_to((i + template[:, 1]) * step / canvas_h, shape)
        w = np.broadcast_to(template[:, 2] / canvas_w, shape)
        h = np.broadcast_to(template[:, 2] / canvas_h, shape)
        parts.append(np.stack([cx, cy, w, h], axis=-1).reshape(-1, 4))
    priors = np.concatenate(parts).astype(np.float32)
    priors.flags.writeable = False
    return priors
