"""Clips with known motion, for measuring landmark jitter, lag and track identities.

A still photo is moved along a smooth sub-pixel path (translation, a slow zoom and a small
rotation) and resampled into each frame; the true per-frame affine map is kept beside the
frames. Mapping each frame's landmarks back through the inverse map gives where the method
put them on the still photo: a perfect method gives the same points in every frame, so the
frame-to-frame change there is jitter, and their spread around their mean is jitter plus
lag. ``noise`` adds a camera's per-frame sensor noise, so a still segment is still the
way a real still face is.

:func:`make_crossing_clip` moves two faces past each other, one passing in front of the
other, with each face's true position known: :func:`id_switches` counts how often the
track id reported on a face changes.
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
    noise: float = 0.0,
    seed: int = 0,
) -> MotionClip:
    """Move ``photo`` (H, W, 3) uint8 smoothly inside a ``size`` (height, width) frame.

    The path is a Lissajous curve of ``amplitude`` pixels with a 3 % zoom and a 2-degree
    rotation swing, one period over the clip; the first ``still`` frames do not move.
    ``noise``: standard deviation (grey levels) of Gaussian noise added to every frame.
    """
    import cv2

    rng = np.random.default_rng(seed)

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
        frame = cv2.warpAffine(
            photo, affines[t], (width, height), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)
        )
        out[t] = _add_noise(frame, noise, rng)
    return MotionClip(out, affines)


def _add_noise(frame: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    if noise <= 0:
        return frame
    noisy = frame.astype(np.float32) + rng.normal(0.0, noise, frame.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


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


# ---------------------------------------------------------------------------- two faces


@dataclasses.dataclass(frozen=True)
class CrossingClip:
    """frames (T, H, W, 3) uint8; affines (T, F, 2, 3): frame xy = A @ (cutout x, y, 1) of
    each face; centres (F, 2): each face's centre in its cutout; sides (F,): each face's
    size in the frame (pixels); visible (T, F): at least half of the face is uncovered."""

    frames: np.ndarray
    affines: np.ndarray
    centres: np.ndarray
    sides: np.ndarray
    visible: np.ndarray

    def face_centres(self) -> np.ndarray:
        """(T, F, 2) each face's centre in each frame."""
        points = np.concatenate([self.centres, np.ones((len(self.centres), 1))], axis=1)
        return np.einsum("tfij,fj->tfi", self.affines, points)


def face_cutout(photo: np.ndarray, box: np.ndarray, margin: float = 0.9) -> tuple:
    """The face in ``box`` (x1, y1, x2, y2) of ``photo`` with ``margin`` times its size
    around it: (cutout (h, w, 3) uint8, soft elliptical mask (h, w) float32 0..1, the
    face's centre (2,) in the cutout)."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = (1 + margin) * max(x2 - x1, y2 - y1) / 2
    left, top = int(max(cx - half, 0)), int(max(cy - half, 0))
    right = int(min(cx + half, photo.shape[1]))
    bottom = int(min(cy + half, photo.shape[0]))
    cutout = np.ascontiguousarray(photo[top:bottom, left:right])
    yy, xx = np.mgrid[0 : bottom - top, 0 : right - left].astype(np.float32)
    centre = np.array([cx - left, cy - top])
    radius = np.array([(x2 - x1) * (1 + margin / 2) / 2, (y2 - y1) * (1 + margin / 2) / 2])
    distance = np.hypot((xx - centre[0]) / radius[0], (yy - centre[1]) / radius[1])
    mask = np.clip((1.15 - distance) / 0.3, 0.0, 1.0)  # soft edge, no hard seam
    return cutout, mask.astype(np.float32), centre


def make_crossing_clip(
    faces: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    frames: int = 90,
    size: tuple[int, int] = (360, 640),
    still: int = 10,
    face_size: float = 130.0,
    vertical_gap: float = 30.0,
    noise: float = 1.0,
    seed: int = 0,
) -> CrossingClip:
    """Two faces (:func:`face_cutout`) pass each other: the first walks left to right, the
    second right to left in front of it, ``vertical_gap`` pixels lower; both still for
    ``still`` frames at each end, easing in and out in between; ``face_size`` pixels tall.
    """
    import cv2

    if len(faces) != 2:
        raise ValueError(f"a crossing clip moves two faces, got {len(faces)}")
    height, width = size
    rng = np.random.default_rng(seed)
    background = np.full((height, width, 3), 110, np.float32)
    background += np.linspace(-20, 20, width, dtype=np.float32)[None, :, None]  # not flat
    moving = max(frames - 2 * still, 1)
    ends = np.array([[0.2 * width, 0.8 * width], [0.8 * width, 0.2 * width]])
    rows = np.array([height / 2 - vertical_gap / 2, height / 2 + vertical_gap / 2])
    out = np.empty((frames, height, width, 3), np.uint8)
    affines = np.empty((frames, 2, 2, 3))
    visible = np.ones((frames, 2), bool)
    scales = [face_size / (cut.shape[0] / 1.9) for cut, _, _ in faces]  # cutout: 1.9 sides
    for t in range(frames):
        s = np.clip((t - still) / moving, 0.0, 1.0)
        ease = (1 - np.cos(np.pi * s)) / 2
        frame = background.copy()
        masks = []
        for f, (cutout, mask, centre) in enumerate(faces):
            x = ends[f, 0] + (ends[f, 1] - ends[f, 0]) * ease
            affine = np.array(
                [
                    [scales[f], 0, x - scales[f] * centre[0]],
                    [0, scales[f], rows[f] - scales[f] * centre[1]],
                ]
            )
            affines[t, f] = affine
            layer = cv2.warpAffine(cutout, affine, (width, height), flags=cv2.INTER_LINEAR)
            alpha = cv2.warpAffine(mask, affine, (width, height), flags=cv2.INTER_LINEAR)
            frame = frame * (1 - alpha[..., None]) + layer.astype(np.float32) * alpha[..., None]
            masks.append(alpha)
        covered = (masks[0] * masks[1]).sum() / max(masks[0].sum(), 1e-6)
        visible[t, 0] = covered < 0.5
        out[t] = _add_noise(np.clip(np.rint(frame), 0, 255).astype(np.uint8), noise, rng)
    centres = np.stack([c for _, _, c in faces])
    return CrossingClip(out, affines, centres, np.array([face_size] * 2), visible)


def id_switches(track_ids: list[list[int]], centres: list[np.ndarray], clip: CrossingClip) -> dict:
    """How the reported track ids follow the clip's faces.

    Args:
        track_ids: per frame, the reported faces' track ids.
        centres: per frame, (n, 2) the reported faces' centres (e.g. the landmarks' mean).
        clip: the :class:`CrossingClip`.

    Returns:
        {"switches": times a face's reported id changed, "duplicates": reports on a face
        that another report already stands for, "ids": per face the ids it was reported
        with, "missed": per face the frames where it was visible but not reported}.
    """
    from scipy.optimize import linear_sum_assignment

    truth = clip.face_centres()
    last: list[int | None] = [None, None]
    result = {"switches": 0, "duplicates": 0, "ids": [[], []], "missed": [0, 0]}
    for t, (ids, points) in enumerate(zip(track_ids, centres, strict=True)):
        points = np.asarray(points, np.float64).reshape(-1, 2)
        gaps = np.linalg.norm(points[:, None] - truth[t][None], axis=2)  # (reports, faces)
        # a report is on the nearest face; where two faces overlap, on the visible one
        cost = gaps + np.where(clip.visible[t], 0.0, clip.sides)[None]
        owners: dict[int, int] = {}
        for r, face in zip(*linear_sum_assignment(cost), strict=True):
            if gaps[r, face] <= clip.sides[face] / 2:
                owners[int(face)] = int(ids[r])
        result["duplicates"] += sum(
            1
            for r in range(len(points))
            if int(ids[r]) not in owners.values() and (gaps[r] <= clip.sides / 2).any()
        )
        for face in range(2):
            if face not in owners:
                result["missed"][face] += int(clip.visible[t, face])
                continue
            if last[face] is not None and owners[face] != last[face]:
                result["switches"] += 1
            if owners[face] not in result["ids"][face]:
                result["ids"][face].append(owners[face])
            last[face] = owners[face]
    return result
