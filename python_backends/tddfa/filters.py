"""Constant-velocity Kalman filters over many independent components, vectorised.

Each component is a (position, velocity) state; velocity is the change per frame. The
filter predicts with constant velocity, or, where the caller measured how far the
component moved since the last frame (the face's image motion), with that displacement
instead; then it corrects with this frame's measurement. Unlike a fixed low-pass, a
constant-velocity prediction follows steady motion without lag; a measured displacement
follows any motion without lag.

Adaptation: components form groups (e.g. position, rotation, expression); when a group's
innovations exceed ``gate`` standard deviations on average, its predicted covariance is
scaled up by that much for this frame, so the gain (the cut-off frequency) rises with the
motion the model did not expect, instead of the output lagging behind a sudden move.
Bar-Shalom, Li and Kirubarajan, "Estimation with Applications to Tracking and Navigation"
(2001), ch. 6 and 11 (white-noise acceleration model; fading memory on a manoeuvre).
"""

from __future__ import annotations

import numpy as np


class ConstantVelocityKalman:
    """``ConstantVelocityKalman(first, position_std, velocity_std, groups)``, then per frame
    :meth:`predict` and :meth:`update`. All arrays are (n,) float64, one entry per component
    in the component's own unit (host numpy: a face has a few dozen components)."""

    def __init__(
        self,
        first: np.ndarray,
        position_std: np.ndarray,
        velocity_std: np.ndarray,
        groups: np.ndarray,
    ):
        self.position = np.asarray(first, np.float64).copy()
        self.velocity = np.zeros_like(self.position)
        # the symmetric 2x2 covariance of each component: pp, pv (= vp), vv
        self.pp = np.broadcast_to(np.square(position_std), self.position.shape).astype(np.float64)
        self.pv = np.zeros_like(self.position)
        self.vv = np.broadcast_to(np.square(velocity_std), self.position.shape).astype(np.float64)
        self.groups = np.asarray(groups)
        self.group_ids = np.unique(self.groups)

    def predicted(self, frames: int = 1) -> np.ndarray:
        """(n,) where the components will be ``frames`` frames ahead at constant velocity."""
        return self.position + frames * self.velocity

    def predict(
        self,
        acceleration_std: np.ndarray,
        displacement: np.ndarray | None = None,
        displacement_std: np.ndarray | None = None,
    ) -> None:
        """Advance one frame.

        Args:
            acceleration_std: (n,) standard deviation of the velocity's change per frame.
            displacement: (n,) measured change of each component since the last frame, NaN
                where not measured (those advance at constant velocity); None: none measured.
            displacement_std: (n,) standard deviation of ``displacement``.
        """
        q = np.square(acceleration_std) * np.ones_like(self.position)
        pp = self.pp + 2 * self.pv + self.vv + q / 4
        pv = self.pv + self.vv + q / 2
        vv = self.vv + q
        position = self.position + self.velocity
        velocity = self.velocity.copy()
        if displacement is not None:
            measured = ~np.isnan(displacement)
            d = displacement[measured]
            r = np.square(displacement_std * np.ones_like(self.position))[measured]
            # x_t = x_{t-1} + d + e: the error of d enters the position and the velocity
            position[measured] = self.position[measured] + d
            velocity[measured] = d
            pp[measured] = self.pp[measured] + r
            pv[measured] = r
            vv[measured] = r + q[measured]
        self.position, self.velocity = position, velocity
        self.pp, self.pv, self.vv = pp, pv, vv

    def update(self, measurement: np.ndarray, measurement_std: np.ndarray, gate: float) -> None:
        """Correct with this frame's (n,) measurement of the positions."""
        r = np.square(measurement_std) * np.ones_like(self.position)
        innovation = np.asarray(measurement, np.float64) - self.position
        normalized = np.square(innovation) / (self.pp + r)
        inflate = np.ones_like(self.position)
        for group in self.group_ids:
            members = self.groups == group
            inflate[members] = max(1.0, float(normalized[members].mean()) / gate**2)
        pp, pv, vv = self.pp * inflate, self.pv * inflate, self.vv * inflate
        s = pp + r
        gain_p, gain_v = pp / s, pv / s
        self.position = self.position + gain_p * innovation
        self.velocity = self.velocity + gain_v * innovation
        self.pp = (1 - gain_p) * pp
        self.pv = (1 - gain_p) * pv
        self.vv = vv - gain_v * pv
