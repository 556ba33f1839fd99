"""A face's identity along its track: the 40 shape coefficients, estimated once and held.

The 3DMM separates who a face is (shape) from what it does (expression) and where it is
(pose). A person's shape does not change along a video, but the regressor re-estimates it
on every frame with noise, and a crop that cuts part of the face (a hand, another face, a
profile view) gives an outlier. :class:`IdentityEstimate` keeps a running robust mean:
each frame adds its coefficients with a Huber weight (frames further from the mean than
:data:`HUBER_K` times the usual deviation count less), so a held identity converges over the
first frames and then resists bad ones. The same distance (:func:`identity_distance`)
tells two faces apart when tracks are matched to detections.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Frames further from the mean than this many times the usual deviation count less.
HUBER_K = 2.0
# After this many frames' worth of weight the mean moves by at most 1/MAX_WEIGHT a frame:
# a long track still follows a slow change (lighting, a beard being shaved off).
MAX_WEIGHT = 100.0
# Frames before the usual deviation is trusted (until then every frame counts fully).
WARM_UP = 5


def identity_distance(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """RMS difference of shape coefficients in units of their population deviation.

    Args:
        a: (..., 40) and b: (..., 40) shape coefficients (broadcast).
        scale: (40,) the coefficients' population standard deviations (the regressor's
            de-normalisation std): distance 0.04 is the per-frame noise of a tracked face,
            different people are 0.1 and more apart.

    Returns:
        (...) float64 distances.
    """
    z = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) / scale
    return np.sqrt(np.mean(np.square(z), axis=-1))


@dataclasses.dataclass
class IdentityEstimate:
    """The running robust mean of one track's shape coefficients."""

    scale: np.ndarray  # (40,) population std of the coefficients
    mean: np.ndarray | None = None  # (40,) float64, None before the first frame
    weight: float = 0.0  # frames' worth of evidence, capped at MAX_WEIGHT
    deviation: float = 0.0  # running mean distance of a frame from the mean
    frames: int = 0

    def update(self, alpha_shp: np.ndarray) -> np.ndarray:
        """Add one frame's (40,) coefficients; returns the held identity (40,) float32."""
        sample = np.asarray(alpha_shp, np.float64)
        if self.mean is None:
            self.mean, self.weight, self.frames = sample.copy(), 1.0, 1
            return self.mean.astype(np.float32)
        distance = float(identity_distance(sample, self.mean, self.scale))
        if self.frames < WARM_UP or self.deviation <= 0:
            w = 1.0
        else:
            limit = HUBER_K * self.deviation
            w = 1.0 if distance <= limit else limit / distance
        self.frames += 1
        self.deviation += (distance - self.deviation) / min(self.frames - 1, MAX_WEIGHT)
        self.weight = min(self.weight + w, MAX_WEIGHT)
        self.mean += (w / self.weight) * (sample - self.mean)
        return self.mean.astype(np.float32)

    def distance(self, alpha_shp: np.ndarray) -> float:
        """:func:`identity_distance` of a frame's coefficients to the held identity."""
        if self.mean is None:
            return 0.0
        return float(identity_distance(alpha_shp, self.mean, self.scale))
