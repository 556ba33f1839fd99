"""Causal smoothing of a tracked face in the 3DMM's parameter space.

A face's 62 parameters hold three different things, smoothed three ways:

- **identity** (40 shape coefficients) does not change along a track: the tracker
  estimates it over the track and holds it (tddfa.identity);
- **pose** (the model->image transform: where the face is, its rotation and scale) and
  **expression** (10 coefficients) move: a constant-velocity Kalman filter per component
  (tddfa.filters) removes the regressor's frame-to-frame noise without the lag of a
  low-pass filter, and raises its gain when the face moves in a way the model did not
  expect;
- **image motion**: the face's displacement since the last frame, measured on its crops
  (tddfa.image_motion), drives the filter's position prediction, so the position follows
  any motion at once while the regressor's noise is averaged over many frames.

Units: every component's noise is stated in pixels of the regressor's 120x120 crop, the
resolution the regressor works at, converted per component by how far one unit of it
moves the landmarks. So one set of noise settings holds for every parameter and for every
face size. The translation is filtered at the landmarks' centroid (``anchor``) rather
than at the model origin, so that rotation noise does not leak into the position.
Landmarks, vertices, pose and the render all derive from the filtered parameters.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tddfa.config import NUM_EXP, NUM_LANDMARKS, REGRESSOR_SIZE, PipelineConfig
from tddfa.filters import ConstantVelocityKalman
from tddfa.params import POSE_END, SHAPE_END

# Components of the filtered vector: anchor (x, y, z), the 3x3 linear part, expression.
ANCHOR, LINEAR, EXPRESSION = slice(0, 3), slice(3, 12), slice(12, 12 + NUM_EXP)
GROUPS = np.repeat([0, 1, 2], [3, 9, NUM_EXP])
# A new track's velocity is unknown: its standard deviation, crop pixels per frame.
INITIAL_SPEED = 2.0
# An image-motion measurement whose correlation peak is lower than this (occlusion,
# a turning head, motion blur) is not used: the filter predicts at constant velocity.
MIN_MOTION_PEAK = 0.2


@dataclasses.dataclass(frozen=True)
class SmoothingConfig:
    """Noise model (crop pixels, see the module docstring) and which parts run.

    measurement_noise: the regressor's per-frame noise; acceleration_noise: how much a
    face's velocity changes per frame (higher = follows sudden moves sooner, smooths
    less); motion_noise: error of the image-motion measurement; gate: innovations beyond
    this many standard deviations raise the gain; motion: use the measured image motion.
    """

    measurement_noise: float = 0.4
    acceleration_noise: float = 0.07
    motion_noise: float = 0.07
    gate: float = 2.5
    motion: bool = True

    def __post_init__(self) -> None:
        for name in ("measurement_noise", "acceleration_noise", "motion_noise", "gate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"smoothing_{name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def from_pipeline(cls, config: PipelineConfig) -> SmoothingConfig:
        return cls(
            measurement_noise=config.smoothing_measurement_noise,
            acceleration_noise=config.smoothing_acceleration_noise,
            motion_noise=config.smoothing_motion_noise,
            gate=config.smoothing_gate,
            motion=config.smoothing_motion,
        )


@dataclasses.dataclass(frozen=True)
class FaceGeometry:
    """What converts parameters into pixels of landmark motion, from the BFM.

    centroid (3,): the mean landmarks' centroid in model space; extent: their RMS radius
    about it; expression_reach (10,): RMS landmark displacement per unit of each
    expression coefficient; shape_scale (40,): the shape coefficients' population std.
    """

    centroid: np.ndarray
    extent: float
    expression_reach: np.ndarray
    shape_scale: np.ndarray

    @classmethod
    def from_bfm(cls, bfm) -> FaceGeometry:
        mean = np.asarray(bfm.u_lm, np.float64).reshape(NUM_LANDMARKS, 3)
        centroid = mean.mean(axis=0)
        extent = float(np.sqrt(np.square(mean - centroid).sum(axis=1).mean()))
        w_exp = np.asarray(bfm.w_exp_lm, np.float64).reshape(NUM_LANDMARKS, 3, NUM_EXP)
        reach = np.sqrt(np.square(w_exp).sum(axis=1).mean(axis=0))
        shape_scale = np.asarray(bfm.param_std, np.float64)[POSE_END:SHAPE_END]
        return cls(centroid, extent, reach, shape_scale)


def crop_scale(roi: np.ndarray) -> float:
    """Image pixels per crop pixel of a (4,) ROI box."""
    return max(float(roi[2] - roi[0]) / REGRESSOR_SIZE, 1e-6)


class FaceFilter:
    """The smoothing state of one tracked face.

    ``FaceFilter(config, geometry, transform, alpha_exp, scale)`` starts at a face's
    first measurement; then once per frame ``filter(transform, alpha_exp, scale, motion)``
    -> the filtered (transform, alpha_exp). ``scale`` is image pixels per crop pixel
    (:func:`crop_scale` of the face's ROI).
    """

    def __init__(
        self,
        config: SmoothingConfig,
        geometry: FaceGeometry,
        transform: np.ndarray,
        alpha_exp: np.ndarray,
        scale: float,
    ):
        self.config = config
        self.geometry = geometry
        vector = self._vector(transform, alpha_exp)
        units = self._units(transform, scale)
        self.kalman = ConstantVelocityKalman(
            vector, config.measurement_noise / units, INITIAL_SPEED / units, GROUPS
        )

    # ------------------------------------------------------------------ conversions
    def _vector(self, transform: np.ndarray, alpha_exp: np.ndarray) -> np.ndarray:
        t = np.asarray(transform, np.float64)
        anchor = t[:, :3] @ self.geometry.centroid + t[:, 3]
        return np.concatenate([anchor, t[:, :3].ravel(), np.asarray(alpha_exp, np.float64)])

    def _transform(self, vector: np.ndarray) -> np.ndarray:
        linear = vector[LINEAR].reshape(3, 3)
        translation = vector[ANCHOR] - linear @ self.geometry.centroid
        return np.concatenate([linear, translation[:, None]], axis=1).astype(np.float32)

    def _units(self, transform: np.ndarray, scale: float) -> np.ndarray:
        """(22,) crop pixels of landmark motion per unit of each component."""
        t = np.asarray(transform, np.float64)
        face_scale = float(np.linalg.norm(t[:2, :3], axis=1).mean())  # image px per model unit
        units = np.empty(len(GROUPS))
        units[ANCHOR] = 1.0
        units[LINEAR] = self.geometry.extent
        units[EXPRESSION] = face_scale * self.geometry.expression_reach
        return np.maximum(units / scale, 1e-12)

    # ------------------------------------------------------------------ per frame
    def anchor(self) -> np.ndarray:
        """(2,) image position (x, y) of the filtered anchor: the point whose measured
        displacement drives the next prediction."""
        return self.kalman.position[ANCHOR][:2].copy()

    def __call__(
        self,
        transform: np.ndarray,
        alpha_exp: np.ndarray,
        scale: float,
        motion: tuple[np.ndarray, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Filter one frame.

        Args:
            transform (3, 4), alpha_exp (10,): the regressor's measurement.
            scale: image pixels per crop pixel of the crop it came from.
            motion: the anchor's measured displacement since the last frame ((2,) image
                pixels) and its correlation peak, or None.

        Returns:
            The filtered transform (3, 4) and alpha_exp (10,), float32.
        """
        cfg = self.config
        units = self._units(transform, scale)
        displacement = None
        if cfg.motion and motion is not None and motion[1] >= MIN_MOTION_PEAK:
            displacement = np.full(len(GROUPS), np.nan)
            displacement[:2] = motion[0]
        self.kalman.predict(cfg.acceleration_noise / units, displacement, cfg.motion_noise / units)
        self.kalman.update(
            self._vector(transform, alpha_exp), cfg.measurement_noise / units, cfg.gate
        )
        return self.current()

    def current(self) -> tuple[np.ndarray, np.ndarray]:
        """The filtered (transform, alpha_exp) of the last frame."""
        vector = self.kalman.position
        return self._transform(vector), vector[EXPRESSION].astype(np.float32)

    def predicted(self, frames: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(transform, alpha_exp) ``frames`` frames ahead at the current velocity: the
        next crop is placed there."""
        vector = self.kalman.predicted(frames)
        return self._transform(vector), vector[EXPRESSION].astype(np.float32)
