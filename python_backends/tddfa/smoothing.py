"""Causal temporal smoothing of a tracked face: the One Euro filter.

Casiez, Roussel and Vogel, "1 Euro Filter: A Simple Speed-based Low-pass Filter for Noisy
Input in Interactive Systems" (CHI 2012). A first-order low-pass filter whose cutoff rises
with the signal's speed: at rest it removes jitter (cutoff ``min_cutoff``), in motion it
follows with little lag (cutoff ``min_cutoff + beta * speed``). It looks only at past
frames, so it adds no frames of latency.

Here one filter smooths a whole face: the state vector (the model->image transform and
the shape/expression coefficients) is blended with ONE weight per frame, driven by the
speed of the face's landmarks in pixels per second. One weight for the whole vector keeps
the smoothed mesh, landmarks and pose consistent with each other, and makes ``beta``'s
unit (1 / (px/s)) the same for every deployment.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class OneEuroConfig:
    """min_cutoff (Hz): smoothing at rest (lower = smoother); beta (1/(px/s)): how fast the
    cutoff rises with speed (higher = less lag); d_cutoff (Hz): smoothing of the speed
    estimate; frame_rate (frames/s): the time step between frames."""

    min_cutoff: float = 1.0
    beta: float = 0.15
    d_cutoff: float = 1.0
    frame_rate: float = 30.0

    def __post_init__(self) -> None:
        for name in ("min_cutoff", "d_cutoff", "frame_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


def smoothing_factor(cutoff: float, frame_rate: float) -> float:
    """Weight of the new sample in an exponential low-pass at ``cutoff`` Hz."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau * frame_rate)


@dataclasses.dataclass
class OneEuroFilter:
    """State of one face's filter: the smoothed vector and the smoothed speed."""

    config: OneEuroConfig
    value: np.ndarray | None = None  # smoothed state vector (float64)
    speed: float = 0.0  # smoothed landmark speed, px/s

    def __call__(self, value: np.ndarray, displacement: float) -> np.ndarray:
        """Smooth one frame.

        Args:
            value: the raw state vector of this frame.
            displacement: mean landmark displacement (pixels) between this frame's raw
                landmarks and the previous frame's smoothed ones; 0 on the first frame.

        Returns:
            The smoothed state vector (float64, same shape as ``value``).
        """
        value = np.asarray(value, dtype=np.float64)
        if self.value is None:
            self.value = value.copy()
            return self.value
        cfg = self.config
        raw_speed = displacement * cfg.frame_rate
        self.speed += smoothing_factor(cfg.d_cutoff, cfg.frame_rate) * (raw_speed - self.speed)
        cutoff = cfg.min_cutoff + cfg.beta * abs(self.speed)
        self.value = self.value + smoothing_factor(cutoff, cfg.frame_rate) * (value - self.value)
        return self.value
