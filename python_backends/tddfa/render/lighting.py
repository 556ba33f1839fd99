"""The light model of the shaded mode, shared by both renderers (no GL, no numba here)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Lighting:
    """Light model of 3DDFA_V2's renderer (Sim3DR defaults); positions in its normalised
    per-face frame (face centred, longest side 2, z towards the camera)."""

    ambient: float = 0.3
    diffuse: float = 0.6
    specular: float = 0.1
    specular_exponent: float = 5.0
    light_position: tuple[float, float, float] = (0.0, 0.0, 5.0)
    view_position: tuple[float, float, float] = (0.0, 0.0, 5.0)
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def packed(self) -> np.ndarray:
        """(13,) float64: ambient, diffuse, specular, exponent, light xyz, view xyz, rgb."""
        return np.array(
            [self.ambient, self.diffuse, self.specular, self.specular_exponent,
             *self.light_position, *self.view_position, *self.color],
            np.float64,
        )  # fmt: skip
