"""Clips with known motion, for measuring landmark jitter and lag.

A still photo is moved along a smooth sub-pixel path (translation, a slow zoom and a small
rotation) and resampled into each frame; the true per-frame affine map is kept beside the
frames. Mapping each frame's landmarks back through the inverse map gives where the method
put them on the still photo: a perfect method gives the same points in every frame, so the
frame-to-frame change there is jitter, and their spread around their mean is jitter plus
lag.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MotionClip:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    affines: np.ndarray  # (T, 2, 3) float64: frame xy = A @ (photo x, y, 1)


def make_clip(
    photo: np.ndarray,
    frames: int = 90,
    size: tuple[int, int] = (360, 640),
    amplitude: float = 40.0,
    still: int = 0,
) -> MotionClip:
    """Move ``photo`` (H, W, 3) uint8 smoothly inside a ``size`` (height, width) frame.

    The path is a Lissajous curve of ``amplitude`` pixels with a 3 % zoom and a 2-degree
    rotation swing, one period over the clip; the first ``still`` frames do not move.
    """
    import cv2

    height, width = size
    scale0 = min(height / photo.shape[0], width / photo.shape[1]) * 0.9
    centre_photo = np.array([photo.shape[1], photo.shape[0]], np.float64) / 2
    centre_frame = np.array([width, height], np.float64) / 2
    out = np.empty((frames, height, width, 3), np.uint8)
    affines = np.empty((frames, 2, 3), np.float64)
    moving = max(frames - still, 1)
    for t in range(frames):
        phase = 2 * np.pi * max(t - still, 0) / moving
        shift = amplitude * np.array([np.sin(phase), 0.5 * np.sin(2 * phase)])
        scale = scale0 * (1 + 0.03 * np.sin(phase))
        angle = np.radians(2.0 * np.sin(phase))
        rotation = scale * np.array(
            [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        )
        offset = centre_frame + shift - rotation @ centre_photo
        affines[t] = np.concatenate([rotation, offset[:, None]], axis=1)
        out[t] = cv2.warpAffine(
            photo, affines[t], (width, height), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)
        )
    return MotionClip(out, affines)


def map_back(landmarks: np.ndarray, affines: np.ndarray) -> np.ndarray:
    """(T, 2+, 68) frame landmarks -> (T, 2, 68) positions on the still photo."""
    xy = np.asarray(landmarks, np.float64)[:, :2]
    linear, offset = affines[:, :, :2], affines[:, :, 2:]
    return np.linalg.solve(linear, xy - offset)


@dataclasses.dataclass(frozen=True)
class Jitter:
    """jitter: mean frame-to-frame landmark change on the photo (px of the photo);
    spread: mean distance of each frame's landmarks from their mean position."""

    jitter: float
    spread: float


def measure(landmarks: np.ndarray, affines: np.ndarray) -> Jitter:
    """Jitter and spread of (T, 2+, 68) landmarks of one face over a :class:`MotionClip`."""
    photo = map_back(landmarks, affines)
    steps = np.linalg.norm(np.diff(photo, axis=0), axis=1)  # (T-1, 68)
    spread = np.linalg.norm(photo - photo.mean(axis=0, keepdims=True), axis=1)
    return Jitter(float(steps.mean()), float(spread.mean()))
