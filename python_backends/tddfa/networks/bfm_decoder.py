"""Dense BFM decoder: 3DMM coefficients -> model-space vertices (MODELS.md 4).

V = reshape_xyz(u + w_shp @ alpha_shp + w_exp @ alpha_exp), one matrix product for a
whole (N, K) batch of faces. The bases are stored axis-major (all x, then all y, then
all z) so that the product reshapes to (..., 3, V) without a transpose.

Keep this graph in float32: BFM coordinates are micrometres (|u| reaches 1.3e5) and the
shape coefficients reach 1e6, both beyond the float16 range.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _axis_major(rows: np.ndarray) -> np.ndarray:
    """(3V, ...) xyz-interleaved rows -> (3V, ...) rows ordered x..x, y..y, z..z."""
    n = rows.shape[0] // 3
    return rows.reshape(n, 3, *rows.shape[1:]).swapaxes(0, 1).reshape(rows.shape)


class BFMDecoder(nn.Module):
    """(N, K, 40) shape + (N, K, 10) expression coefficients -> (N, K, 3, V) float32.

    Any number of leading dimensions works; the graph exported for Triton uses (N, K).
    """

    def __init__(self, u: np.ndarray, w_shp: np.ndarray, w_exp: np.ndarray) -> None:
        """u (3V,), w_shp (3V, S), w_exp (3V, E): xyz-interleaved rows (bfm.BFM layout)."""
        super().__init__()
        if u.ndim != 1 or w_shp.shape[0] != u.shape[0] or w_exp.shape[0] != u.shape[0]:
            raise ValueError(
                f"BFM decoder needs u (3V,), w_shp (3V, S), w_exp (3V, E) with the same 3V, "
                f"got {u.shape}, {w_shp.shape}, {w_exp.shape}"
            )
        self.num_vertices = u.shape[0] // 3
        basis = np.concatenate([w_shp, w_exp], axis=1)  # (3V, S + E)
        self.register_buffer(
            "mean", torch.from_numpy(np.ascontiguousarray(_axis_major(u), dtype=np.float32))
        )
        self.register_buffer(
            "basis_t",
            torch.from_numpy(np.ascontiguousarray(_axis_major(basis).T, dtype=np.float32)),
        )  # (S + E, 3V)

    def forward(self, alpha_shp: torch.Tensor, alpha_exp: torch.Tensor) -> torch.Tensor:
        alpha = torch.cat([alpha_shp, alpha_exp], dim=-1)  # (..., S + E)
        flat = torch.matmul(alpha, self.basis_t) + self.mean  # (..., 3V)
        return flat.unflatten(-1, (3, self.num_vertices))
