"""The dense BFM decoded on the fly: coefficients -> model-space mesh and landmarks.

``V = u + W_shp @ alpha_shp + W_exp @ alpha_exp`` (MODELS.md 4) as one matrix product over
the faces that exist: a frame's empty face slots are never decoded. The bases are kept
axis-major (all x, then all y, then all z), so the product is the planar (F, 3, N) layout
the renderer and ``VERTICES`` use, with no transpose. numpy on the host, CuPy on a GPU (the
bases are copied to each CUDA device once).

Keep this in float32: BFM coordinates are micrometres (|u| reaches 1.3e5), beyond float16.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tddfa.bfm import BFM
from tddfa.config import NUM_EXP, NUM_LANDMARKS, NUM_SHAPE
from tddfa.xp import get_xp, to_numpy


def _axis_major(rows: np.ndarray) -> np.ndarray:
    """(3N, ...) xyz-interleaved rows -> (3N, ...) rows ordered x..x, y..y, z..z."""
    n = rows.shape[0] // 3
    return rows.reshape(n, 3, *rows.shape[1:]).swapaxes(0, 1).reshape(rows.shape)


def filled_slots(num_faces: Any, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Host indices of the filled face slots of a batch.

    Args:
        num_faces: (B, 1) int face counts (numpy or CuPy: one small copy to the host).
        max_faces: K, the number of slots per frame.

    Returns:
        (frame index (F,), slot index (F,)) int64, frame-major.

    Raises:
        ValueError: a count outside 0..K.
    """
    counts = to_numpy(num_faces).reshape(-1).astype(np.int64)
    if counts.size and (counts.min() < 0 or counts.max() > max_faces):
        raise ValueError(
            f"NUM_FACES must lie in 0..{max_faces} (the face slots of ALPHA_SHP/TRANSFORM), "
            f"got {counts.tolist()}"
        )
    frames = np.repeat(np.arange(counts.size), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    slots = np.arange(frames.size) - starts
    return frames, slots


class DenseDecoder:
    """Decodes BFM coefficients into model-space vertices and landmarks.

    Args:
        bfm: the no-neck BFM (exact or approximate; :meth:`BFM.description` says which).
    """

    def __init__(self, bfm: BFM) -> None:
        self.bfm = bfm
        self.num_vertices = bfm.num_vertices
        basis = np.concatenate([bfm.w_shp, bfm.w_exp], axis=1)  # (3N, 50)
        self._mean = np.ascontiguousarray(_axis_major(bfm.u), dtype=np.float32)  # (3N,)
        self._basis_t = np.ascontiguousarray(_axis_major(basis).T, dtype=np.float32)  # (50, 3N)
        lm_basis = np.concatenate([bfm.w_shp_lm, bfm.w_exp_lm], axis=1)  # (204, 50)
        self._lm_mean = np.ascontiguousarray(_axis_major(bfm.u_lm), dtype=np.float32)
        self._lm_basis_t = np.ascontiguousarray(_axis_major(lm_basis).T, dtype=np.float32)
        self._device: dict[int, tuple[Any, ...]] = {}  # CUDA device -> its copies

    def _tables(self, xp: Any, like: Any) -> tuple[Any, Any, Any, Any]:
        host = (self._mean, self._basis_t, self._lm_mean, self._lm_basis_t)
        if xp is np:
            return host
        device = like.device.id
        tables = self._device.get(device)
        if tables is None:
            with xp.cuda.Device(device):
                tables = tuple(xp.asarray(t) for t in host)
            self._device[device] = tables
        return tables

    @staticmethod
    def _alpha(alpha_shp: Any, alpha_exp: Any) -> tuple[Any, Any]:
        xp = get_xp(alpha_shp, alpha_exp)
        if alpha_shp.ndim != 2 or alpha_shp.shape[1] != NUM_SHAPE:
            raise ValueError(f"alpha_shp must be (F, {NUM_SHAPE}), got {tuple(alpha_shp.shape)}")
        if alpha_exp.shape != (alpha_shp.shape[0], NUM_EXP):
            raise ValueError(
                f"alpha_exp must be ({alpha_shp.shape[0]}, {NUM_EXP}), got {tuple(alpha_exp.shape)}"
            )
        alpha = xp.concatenate([alpha_shp, alpha_exp], axis=1).astype(xp.float32, copy=False)
        return xp, alpha

    def vertices(self, alpha_shp: Any, alpha_exp: Any) -> Any:
        """(F, 40), (F, 10) coefficients -> (F, 3, N) float32 model-space vertices."""
        xp, alpha = self._alpha(alpha_shp, alpha_exp)
        mean, basis_t, _, _ = self._tables(xp, alpha)
        flat = alpha @ basis_t
        flat += mean
        return flat.reshape(-1, 3, self.num_vertices)

    def landmarks(self, alpha_shp: Any, alpha_exp: Any) -> Any:
        """(F, 40), (F, 10) coefficients -> (F, 3, 68) float32 model-space landmarks
        (the BFM's exact landmark rows, as tddfa.params.landmark_vertices)."""
        xp, alpha = self._alpha(alpha_shp, alpha_exp)
        _, _, lm_mean, lm_basis_t = self._tables(xp, alpha)
        return (alpha @ lm_basis_t + lm_mean).reshape(-1, 3, NUM_LANDMARKS)
