"""What the tracker keeps about a face, and the checks that a new measurement is of it.

A :class:`Track` is one face followed over frames (its id, identity, smoothing state,
last crop); a :class:`Measured` is one regression of a face on one frame. The checks
decide which measurements the tracker believes: a crop that lost its face, a fit pulled
onto another face passing in front, two tracks that ended on one face.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tddfa import params
from tddfa.association import iou, landmark_box
from tddfa.config import PipelineConfig
from tddfa.identity import IdentityEstimate
from tddfa.smoothing import FaceFilter

# A tracked face's landmarks must span at least this fraction of its crop's side (a crop
# that slid off the face yields a collapsed fit) and at most this much (a runaway crop).
MIN_LANDMARK_SPREAD = 0.25
MAX_LANDMARK_SPREAD = 1.0
# ... and at least this fraction of the landmarks' bounding box must be inside the frame.
MIN_VISIBLE_FRACTION = 0.5
# Two tracked faces whose landmarks' boxes overlap this much are one face seen twice.
DUPLICATE_IOU = 0.5
# A tracked face whose landmarks land further than this fraction of its size from where it
# was expected was pulled away by something else in its crop (another face passing in
# front): it is lost for this frame rather than followed.
MAX_JUMP = 0.25


@dataclasses.dataclass
class Track:
    """One face followed over frames: what the next frame needs to find it, smooth it and
    tell it from other faces."""

    track_id: int
    box_in_landmarks: np.ndarray  # (4,) the face's box relative to its landmarks' box
    identity: IdentityEstimate
    landmarks: np.ndarray  # (3, 68) output landmarks of the last frame the face was seen
    next_landmarks: np.ndarray  # (3, 68) where the next crop goes
    score: float = 0.0
    filter: FaceFilter | None = None
    crop: Any = None  # (120, 120) gray crop of the last frame (image motion), frames' device
    spectrum: Any = None  # that crop's image_motion.spectrum, once computed
    roi: np.ndarray | None = None  # (4,) the ROI that crop was cut from
    anchor: np.ndarray | None = None  # (2,) image point whose motion is measured
    missing: int = 0  # frames since the face was last seen (lost tracks)
    outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # smoothed

    def expected_landmarks(self, frames: int, bfm: Any) -> np.ndarray:
        """(3, 68) where the face should be ``frames`` frames after it was last seen."""
        if self.filter is None or frames <= 1:
            return self.next_landmarks
        transform, alpha_exp = self.filter.predicted(frames)
        shape = self.identity.mean.astype(np.float32)
        landmarks = params.landmarks_from_transform(
            transform[None], shape[None], alpha_exp[None], bfm
        )
        return landmarks[0]


@dataclasses.dataclass
class Measured:
    """One face's regression on one frame (host arrays), with its crop's facts."""

    outputs: dict[str, np.ndarray]  # the aligner's outputs for this face
    roi: np.ndarray  # (4,)
    score: float
    crop: Any  # (120, 120) gray crop, frames' device
    motion: tuple[np.ndarray, float] | None = None  # anchor displacement (2,) px, peak
    spectrum: Any = None  # the crop's image_motion.spectrum, where its motion was measured
    detection: np.ndarray | None = None  # (5,) the detection this face matched, if any
    fresh: bool = False  # a new or re-found track: its box is the detection's


def plausible(
    roi_box: np.ndarray, landmarks: np.ndarray, height: int, width: int, min_roi_area: float
) -> bool:
    """Whether a tracked face is still a face: its crop is large enough (the original's
    2020 px^2 rule), the new landmarks span a sane part of the crop, and at least half
    of their bounding box is inside the frame (a face sliding out is dropped, not
    followed into the border)."""
    side = float(roi_box[2] - roi_box[0])
    if side * side < min_roi_area:
        return False
    x1, y1, x2, y2 = landmark_box(landmarks[None])[0]
    spread = max(x2 - x1, y2 - y1) / side
    if not MIN_LANDMARK_SPREAD <= spread <= MAX_LANDMARK_SPREAD:
        return False
    inside_w = max(0.0, min(x2, width) - max(x1, 0.0))
    inside_h = max(0.0, min(y2, height) - max(y1, 0.0))
    area = max((x2 - x1) * (y2 - y1), 1e-6)
    return inside_w * inside_h / area >= MIN_VISIBLE_FRACTION


def still_a_face(
    score: float,
    roi_box: np.ndarray,
    landmarks: np.ndarray,
    height: int,
    width: int,
    cfg: PipelineConfig,
) -> bool:
    """Whether a face regressed in ``roi_box`` is one to track: its face-check ``score``
    reaches ``track_min_face_score`` and it is :func:`plausible`."""
    return score >= cfg.track_min_face_score and plausible(
        roi_box, landmarks, height, width, cfg.track_min_roi_area
    )


def fits(detection: np.ndarray, landmarks: np.ndarray) -> bool:
    """Whether a detection's (3, 68) fit is of the detected face: the detection box's
    centre lies within the landmarks' box (a crop holding a second face, e.g. one passing
    in front, can pull the fit onto that one)."""
    x1, y1, x2, y2 = landmark_box(landmarks[None])[0]
    cx, cy = (detection[0] + detection[2]) / 2, (detection[1] + detection[3]) / 2
    return bool(x1 <= cx <= x2 and y1 <= cy <= y2)


def jumped(expected: np.ndarray, landmarks: np.ndarray) -> bool:
    """Whether (3, 68) landmarks are further than MAX_JUMP of the face's size from the
    (3, 68) expected ones."""
    x1, y1, x2, y2 = landmark_box(expected[None])[0]
    gap = np.linalg.norm(landmarks[:2].mean(axis=1) - expected[:2].mean(axis=1))
    return bool(gap > MAX_JUMP * max(x2 - x1, y2 - y1))


def drop_duplicates(tracks: list[Track], found: dict[int, Measured], appearance: bool) -> None:
    """Two tracks on one face (after a crossing): the one whose identity fits the face
    better (or, without ``appearance``, the older) keeps it; the other leaves ``found``
    ({track index: its measurement}) and is lost."""
    seen = sorted(found)
    if len(seen) < 2:
        return
    boxes = landmark_box(np.stack([found[j].outputs["LANDMARKS"] for j in seen]))
    overlap = iou(boxes, boxes)
    for a in range(len(seen)):
        for b in range(a + 1, len(seen)):
            ja, jb = seen[a], seen[b]
            if ja not in found or jb not in found or overlap[a, b] < DUPLICATE_IOU:
                continue
            fit = [
                tracks[j].identity.distance(found[j].outputs["ALPHA_SHP"])
                if appearance
                else tracks[j].track_id
                for j in (ja, jb)
            ]
            del found[jb if fit[0] <= fit[1] else ja]
