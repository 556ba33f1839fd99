"""Face tracking across the frames of a sequence (the ``tddfa_track`` ensemble).

As in the original 3DDFA_V2 video demos, a tracked frame does not run the detector: each
face is cropped where the previous frames put it. Where the original squares the
landmarks' bounding box (MODELS.md 3, "tracking mode"), this tracker carries the face's
detection box along with its landmarks: at detection it records where the box sits
relative to the landmarks' bounding box, and on later frames it puts the box back at the
same place relative to where the face is expected (the smoothed landmarks moved on by
the face's velocity) and crops with the detection rule (MODELS.md 3). A face that does not
move is therefore cropped exactly as its detection was, so tracked results equal
per-frame ones on still segments and cannot drift.

The detector runs on a sequence's first frame, every ``track_detect_every`` frames (to find
faces that entered) and on any frame where a track was lost. A tracked face is lost when
FaceBoxes on its own crop no longer sees a face, when its crop is implausible (too small,
the face leaving the frame) or when another track took its place (two tracks on one face
after a crossing: the one whose identity and position fit keeps it). On a detection frame
tracked faces keep their tracked crop; each detection that overlaps one only moves its
box a little towards the detector's (``track_box_blend``: boxes do not jump at
re-detection). Other detections are regressed from their detection crop and either take
back the id of a lost track (expected near there, same identity: a face that was hidden
behind another one) or start a new track.

Smoothing (tddfa.smoothing): each track holds its identity (tddfa.identity) and filters
its pose and expression; every output (landmarks, pose, params, mesh, box) derives from
the smoothed state, so they agree with each other. The per-face score is FaceBoxes' score
on the face's tracked crop (the detection score on the frame a track starts).

State is plain host memory per sequence plus each face's last crop (57 kB, on the frames'
device) for the image motion; :class:`SequenceStore` keeps it by sequence id and frees it
on END or after an idle timeout.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from tddfa import image_motion, params, roi
from tddfa.aligner import Aligner
from tddfa.association import (
    box_from_landmarks,
    box_relative_to,
    iou,
    landmark_box,
    match_boxes,
    match_identities,
)
from tddfa.config import NUM_EXP, NUM_SHAPE, REGRESSOR_SIZE, PipelineConfig
from tddfa.detector import Detector
from tddfa.identity import IdentityEstimate
from tddfa.smoothing import FaceFilter, FaceGeometry, SmoothingConfig, crop_scale
from tddfa.xp import get_xp, to_numpy

# A tracked face's landmarks must span at least this fraction of its crop's side (a crop
# that slid off the face yields a collapsed fit) and at most this much (a runaway crop).
MIN_LANDMARK_SPREAD = 0.25
MAX_LANDMARK_SPREAD = 1.0
# ... and at least this fraction of the landmarks' bounding box must be inside the frame.
MIN_VISIBLE_FRACTION = 0.5
# Two tracked faces whose boxes overlap this much are one face seen twice.
DUPLICATE_IOU = 0.5
# A tracked face whose landmarks land further than this fraction of its size from where it
# was expected was pulled away by something else in its crop (another face passing in
# front): it is lost for this frame rather than followed.
MAX_JUMP = 0.25
# What a tracker step returns per frame (besides the aligner's outputs).
TRACK_OUTPUTS = ("FACE_BOXES", "FACE_COUNT", "TRACK_IDS", "DETECTED")
# The tracker's settings a sequence may choose for itself on its START frame.
SEQUENCE_SETTINGS = (
    "smoothing",
    "smoothing_identity",
    "smoothing_filter",
    "smoothing_motion",
    "track_box_blend",
    "track_appearance",
)


@dataclasses.dataclass
class Track:
    track_id: int
    box_in_landmarks: np.ndarray  # (4,) the face's box relative to its landmarks' box
    identity: IdentityEstimate
    landmarks: np.ndarray  # (3, 68) output landmarks of the last frame the face was seen
    next_landmarks: np.ndarray  # (3, 68) where the next crop goes
    score: float = 0.0
    filter: FaceFilter | None = None
    crop: Any = None  # (120, 120) gray crop of the last frame (image motion), frames' device
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
        return params.landmarks_from_transform(transform[None], shape[None], alpha_exp[None], bfm)[
            0
        ]


@dataclasses.dataclass
class SequenceState:
    """Everything the tracker keeps about one sequence."""

    tracks: list[Track] = dataclasses.field(default_factory=list)
    lost: list[Track] = dataclasses.field(default_factory=list)  # remembered, not output
    next_track_id: int = 1
    frames: int = 0  # frames processed
    frames_since_detection: int = 0
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # SEQUENCE_SETTINGS
    config: PipelineConfig | None = None  # the tracker's config with the settings applied


@dataclasses.dataclass
class Measured:
    """One face's regression on one frame (host arrays), with its crop's facts."""

    outputs: dict[str, np.ndarray]  # the aligner's outputs for this face
    roi: np.ndarray  # (4,)
    score: float
    crop: Any  # (120, 120) gray crop, frames' device
    motion: tuple[np.ndarray, float] | None = None  # anchor displacement (2,) px, peak
    detection: np.ndarray | None = None  # (5,) the detection this face matched, if any
    fresh: bool = False  # a new or re-found track: its box is the detection's


class Tracker:
    """Runs a batch of frames, each from its own sequence, against that sequence's state.

    ``Tracker(config, detector, aligner).step(images, states)`` -> outputs for the batch
    (host numpy arrays) and updates ``states`` in place. ``detector`` is a
    :class:`tddfa.detector.Detector` or anything with its interface (``validate``,
    ``__call__``, ``face_scores``; the tracker scores filled face slots only), e.g. the BLS
    detector of ``tddfa_triton.bls`` that calls a served face_detector model.
    """

    def __init__(self, config: PipelineConfig, detector: Detector, aligner: Aligner):
        self.config = config
        self.detector = detector
        self.aligner = aligner
        self.bfm = aligner.bfm
        self.geometry = FaceGeometry.from_bfm(self.bfm)
        self.configure({})  # refuse bad settings at load

    def configure(self, settings: dict[str, Any]) -> PipelineConfig:
        """The config of a sequence with ``settings`` (some of :data:`SEQUENCE_SETTINGS`)."""
        config = dataclasses.replace(self.config, **settings) if settings else self.config
        SmoothingConfig.from_pipeline(config)
        return config

    # ------------------------------------------------------------------ the batch
    def step(self, images: Any, states: Sequence[SequenceState]) -> dict[str, np.ndarray]:
        """Track one frame of each sequence.

        Args:
            images: (B, H, W, 3) uint8 RGB frames of one size (validated), numpy or CuPy.
            states: B sequence states, one per frame, all different sequences.

        Returns:
            Host arrays: FACE_BOXES (B,K,5) (score: FaceBoxes on the face's crop),
            FACE_COUNT (B,1) int32, TRACK_IDS (B,K) int32, DETECTED (B,1) bool (the
            detector ran on this frame), and the aligner's PARAMS, POSE, LANDMARKS,
            ALPHA_SHP, ALPHA_EXP, TRANSFORM, all smoothed; slots in ascending track id,
            zeros past FACE_COUNT.
        """
        for state in states:
            if state.config is None:
                state.config = self.configure(state.settings)
        measured = self._measure(images, states)  # per frame: {track index: Measured}
        detect = [
            self._due(state) or len(found) < len(state.tracks)
            for state, found in zip(states, measured, strict=True)
        ]
        rows = [b for b in range(len(states)) if detect[b]]
        if rows:
            self._detect(images, states, measured, rows)
        for b, state in enumerate(states):
            self._advance(state, measured[b], detect[b])
        return self._outputs(states, detect)

    def _due(self, state: SequenceState) -> bool:
        every = state.config.track_detect_every
        return (
            state.frames == 0
            or not state.tracks
            or (every > 0 and state.frames_since_detection >= every)
        )

    def _select(self, images: Any, rows: list[int]) -> Any:
        xp = get_xp(images)
        if len(rows) == len(images):
            return images
        return images[xp.asarray(rows)] if xp is not np else images[rows]

    def _regress(
        self, images: Any, rows: list[int], rois: np.ndarray, counts: np.ndarray
    ) -> tuple[dict[str, np.ndarray], Any, Any]:
        """Crop, regress and de-normalise the given frames' filled slots: host outputs,
        the device crops (rows, K, 3, 120, 120) and the (rows, K) filled-slot mask."""
        frames = self._select(images, rows)
        xp = get_xp(frames)
        device_rois, device_counts = xp.asarray(rois), xp.asarray(counts)
        crops = self.aligner.crops(frames, device_rois, device_counts)
        aligned = self.aligner.parameters(
            self.aligner.regress(crops, device_counts), device_rois, device_counts
        )
        mask = np.arange(rois.shape[1])[None, :] < counts[:, None]
        return {name: to_numpy(array) for name, array in aligned.items()}, crops, mask

    def _measure(self, images: Any, states: Sequence[SequenceState]) -> list[dict]:
        """Crop every track where it is expected, regress, check that a face is still
        there and measure its image motion. Returns per frame {track index: Measured}
        for the tracks still seen."""
        rows = [b for b, state in enumerate(states) if state.tracks]
        found: list[dict] = [{} for _ in states]
        if not rows:
            return found
        k = self.config.max_faces
        rois = np.zeros((len(rows), k, 4), np.float32)
        counts = np.zeros(len(rows), np.int32)
        for i, b in enumerate(rows):
            tracks = states[b].tracks
            counts[i] = len(tracks)
            boxes = [box_from_landmarks(t.box_in_landmarks, t.next_landmarks) for t in tracks]
            rois[i, : len(tracks)] = roi.roi_from_box(np.stack(boxes))
        aligned, crops, mask = self._regress(images, rows, rois, counts)
        xp = get_xp(crops)
        filled = crops[xp.asarray(mask)] if xp is not np else crops[mask]
        scores = np.zeros(mask.shape, np.float32)
        scores[mask] = to_numpy(self.detector.face_scores(filled))
        gray = image_motion.gray(filled)  # (faces, 120, 120) in slot order
        height, width = images.shape[1:3]
        slot = 0
        pending = []  # (frame, track index, face) waiting for their image motion
        for i, b in enumerate(rows):
            state = states[b]
            for j, track in enumerate(state.tracks):
                face = Measured(
                    {name: array[i, j] for name, array in aligned.items()},
                    rois[i, j],
                    float(scores[i, j]),
                    gray[slot],
                )
                slot += 1
                if (
                    scores[i, j] < state.config.track_min_face_score
                    or not self._plausible(rois[i, j], face.outputs["LANDMARKS"], height, width)
                    or _jumped(track.next_landmarks, face.outputs["LANDMARKS"])
                ):
                    continue
                found[b][j] = face
                if track.crop is not None:
                    pending.append((b, j, face))
        self._image_motion(states, pending)
        for b in rows:
            self._drop_duplicates(states[b], found[b])
        return found

    def _image_motion(self, states: Sequence[SequenceState], pending: list) -> None:
        """Each pending face's anchor displacement since its track's last crop."""
        if not pending:
            return
        tracks = [states[b].tracks[j] for b, j, _ in pending]
        xp = get_xp(pending[0][2].crop)
        shift, peak = image_motion.crop_shift(
            xp.stack([t.crop for t in tracks]), xp.stack([face.crop for _, _, face in pending])
        )
        moved = image_motion.displacement(
            np.stack([t.anchor for t in tracks]),
            np.stack([t.roi for t in tracks]),
            np.stack([face.roi for _, _, face in pending]),
            to_numpy(shift),
            REGRESSOR_SIZE,
        )
        for (_, _, face), d, p in zip(pending, moved, to_numpy(peak), strict=True):
            face.motion = (d, float(p))

    def _drop_duplicates(self, state: SequenceState, found: dict[int, Measured]) -> None:
        """Two tracks on one face (after a crossing): the one whose identity fits the face
        better (or, without appearance, the older) keeps it; the other is lost."""
        seen = sorted(found)
        if len(seen) < 2:
            return
        overlap = iou(*[landmark_box(np.stack([found[j].outputs["LANDMARKS"] for j in seen]))] * 2)
        for a in range(len(seen)):
            for b in range(a + 1, len(seen)):
                ja, jb = seen[a], seen[b]
                if ja not in found or jb not in found or overlap[a, b] < DUPLICATE_IOU:
                    continue
                fit = [
                    state.tracks[j].identity.distance(found[j].outputs["ALPHA_SHP"])
                    if state.config.track_appearance
                    else state.tracks[j].track_id
                    for j in (ja, jb)
                ]
                del found[jb if fit[0] <= fit[1] else ja]

    @staticmethod
    def _measured_box(track: Track, face: Measured) -> np.ndarray:
        return box_from_landmarks(track.box_in_landmarks, face.outputs["LANDMARKS"])

    def _plausible(
        self, roi_box: np.ndarray, landmarks: np.ndarray, height: int, width: int
    ) -> bool:
        """Whether a tracked face is still a face: its crop is large enough (the original's
        2020 px^2 rule), the new landmarks span a sane part of the crop, and at least half
        of their bounding box is inside the frame (a face sliding out is dropped, not
        followed into the border)."""
        side = float(roi_box[2] - roi_box[0])
        if side * side < self.config.track_min_roi_area:
            return False
        x1, y1, x2, y2 = landmark_box(landmarks[None])[0]
        spread = max(x2 - x1, y2 - y1) / side
        if not MIN_LANDMARK_SPREAD <= spread <= MAX_LANDMARK_SPREAD:
            return False
        inside_w = max(0.0, min(x2, width) - max(x1, 0.0))
        inside_h = max(0.0, min(y2, height) - max(y1, 0.0))
        area = max((x2 - x1) * (y2 - y1), 1e-6)
        return inside_w * inside_h / area >= MIN_VISIBLE_FRACTION

    # ------------------------------------------------------------------ detection
    def _detect(
        self, images: Any, states: Sequence[SequenceState], measured: list, rows: list[int]
    ) -> None:
        """Detect on the given frames: detections on a tracked face refine its box; the
        others are regressed and take back a lost track's id or start new tracks."""
        boxes, counts = (to_numpy(a) for a in self.detector(self._select(images, rows)))
        k = self.config.max_faces
        new = []  # per detecting frame: the detections no tracked face explains
        for i, b in enumerate(rows):
            state, found = states[b], measured[b]
            detections = boxes[i, : int(counts[i])]
            seen = sorted(found)
            tracked = [self._measured_box(state.tracks[j], found[j]) for j in seen]
            matched = match_boxes(
                detections,
                np.stack(tracked) if tracked else np.zeros((0, 4)),
                state.config.track_iou_threshold,
            )
            for d, t in matched.items():
                found[seen[t]].detection = detections[d]
            room = k - len(found)
            new.append([d for d in range(len(detections)) if d not in matched][: max(room, 0)])
        rois = np.zeros((len(rows), k, 4), np.float32)
        new_counts = np.array([len(n) for n in new], np.int32)
        for i, chosen in enumerate(new):
            if chosen:
                rois[i, : len(chosen)] = roi.roi_from_box(boxes[i, chosen])
        if not new_counts.any():
            return
        aligned, crops, mask = self._regress(images, rows, rois, new_counts)
        gray = image_motion.gray(crops)
        for i, b in enumerate(rows):
            faces = [
                Measured(
                    {name: array[i, j] for name, array in aligned.items()},
                    rois[i, j],
                    float(boxes[i, d, 4]),
                    gray[i, j],
                    detection=boxes[i, d],
                )
                for j, d in enumerate(new[i])
            ]
            faces = [f for f in faces if _fits(f.detection, f.outputs["LANDMARKS"])]
            self._adopt(states[b], measured[b], faces)

    def _adopt(self, state: SequenceState, found: dict, faces: list[Measured]) -> None:
        """New detections take back lost tracks (where expected, same identity) or start
        tracks; ``found`` gains them under their track's index in ``state.tracks``."""
        cfg = state.config
        candidates = [t for j, t in enumerate(state.tracks) if j not in found] + state.lost
        taken: dict[int, int] = {}
        if candidates and faces:
            expected = np.stack(
                [
                    box_from_landmarks(
                        t.box_in_landmarks, t.expected_landmarks(t.missing + 1, self.bfm)
                    )
                    for t in candidates
                ]
            )
            distances = np.array(
                [[t.identity.distance(f.outputs["ALPHA_SHP"]) for t in candidates] for f in faces]
            )
            taken = match_identities(
                np.stack([f.detection for f in faces]),
                expected,
                distances,
                cfg.track_iou_threshold,
                cfg.track_identity_distance if cfg.track_appearance else None,
            )
        for f, face in enumerate(faces):
            if f in taken:
                track = candidates[taken[f]]
                if track in state.lost:
                    state.lost.remove(track)
                    state.tracks.append(track)
                track.filter, track.crop = None, None  # it moved unseen: restart its motion
            else:
                track = Track(
                    state.next_track_id,
                    np.zeros(4),
                    IdentityEstimate(self.geometry.shape_scale),
                    face.outputs["LANDMARKS"],
                    face.outputs["LANDMARKS"],
                )
                state.next_track_id += 1
                state.tracks.append(track)
            face.fresh = True
            found[state.tracks.index(track)] = face

    # ------------------------------------------------------------------ state and outputs
    def _advance(self, state: SequenceState, found: dict[int, Measured], detected: bool) -> None:
        """Smooth every face seen on this frame, move the unseen ones to ``lost``, and place
        the next crops."""
        cfg = state.config
        seen, lost = [], []
        for j, track in enumerate(state.tracks):
            if j not in found:
                lost.append(track)
                continue
            face = found[j]
            self._smooth(track, face, cfg)
            if face.detection is not None:
                relative = box_relative_to(face.detection, track.landmarks)
                blend = 1.0 if face.fresh else cfg.track_box_blend
                track.box_in_landmarks = track.box_in_landmarks + blend * (
                    relative - track.box_in_landmarks
                )
            track.score, track.outputs = face.score, face.outputs
            track.crop, track.roi, track.missing = face.crop, face.roi, 0
            seen.append(track)
        for track in lost + state.lost:
            track.missing += 1
        state.lost = [t for t in lost + state.lost if t.missing <= cfg.track_keep_lost]
        state.tracks = sorted(seen, key=lambda t: t.track_id)
        state.frames += 1
        state.frames_since_detection = 1 if detected else state.frames_since_detection + 1

    def _smooth(self, track: Track, face: Measured, cfg: PipelineConfig) -> None:
        """The face's outputs from its smoothed state; sets ``track.landmarks`` (outputs),
        ``track.next_landmarks`` (the next crop) and ``track.anchor``."""
        out = face.outputs
        transform, alpha_shp, alpha_exp = out["TRANSFORM"], out["ALPHA_SHP"], out["ALPHA_EXP"]
        held = track.identity.update(alpha_shp)
        next_transform, next_exp = transform, alpha_exp
        if cfg.smoothing:
            if cfg.smoothing_identity:
                alpha_shp = held
            if cfg.smoothing_filter:
                scale = crop_scale(face.roi)
                if track.filter is None:
                    track.filter = FaceFilter(
                        SmoothingConfig.from_pipeline(cfg),
                        self.geometry,
                        transform,
                        alpha_exp,
                        scale,
                    )
                else:
                    track.filter(transform, alpha_exp, scale, face.motion)
                transform, alpha_exp = track.filter.current()
                next_transform, next_exp = track.filter.predicted()
            else:
                next_transform, next_exp = transform, alpha_exp
        else:
            track.filter = None
        landmarks = params.landmarks_from_transform(
            np.stack([transform, next_transform]),
            np.stack([alpha_shp, alpha_shp]),
            np.stack([alpha_exp, next_exp]),
            self.bfm,
        )
        track.landmarks, track.next_landmarks = landmarks[0], landmarks[1]
        if track.filter is not None:
            track.anchor = track.filter.anchor()
        else:
            track.anchor = landmarks[0][:2].mean(axis=1).astype(np.float64)
        camera = params.transform_to_camera(transform[None], face.roi[None])[0]
        face_params = np.concatenate([camera, alpha_shp, alpha_exp]).astype(np.float32)
        face.outputs = {
            "PARAMS": face_params,
            "POSE": params.pose_degrees(face_params[None])[0],
            "LANDMARKS": landmarks[0],
            "ALPHA_SHP": np.asarray(alpha_shp, np.float32),
            "ALPHA_EXP": np.asarray(alpha_exp, np.float32),
            "TRANSFORM": np.asarray(transform, np.float32),
        }

    def empty_outputs(self, batch: int) -> dict[str, np.ndarray]:
        """What :meth:`step` returns for ``batch`` frames without faces: zeros."""
        k = self.config.max_faces
        return {
            "FACE_BOXES": np.zeros((batch, k, 5), np.float32),
            "FACE_COUNT": np.zeros((batch, 1), np.int32),
            "TRACK_IDS": np.zeros((batch, k), np.int32),
            "DETECTED": np.zeros((batch, 1), bool),
            "PARAMS": np.zeros((batch, k, 62), np.float32),
            "POSE": np.zeros((batch, k, 3), np.float32),
            "LANDMARKS": np.zeros((batch, k, 3, 68), np.float32),
            "ALPHA_SHP": np.zeros((batch, k, NUM_SHAPE), np.float32),
            "ALPHA_EXP": np.zeros((batch, k, NUM_EXP), np.float32),
            "TRANSFORM": np.zeros((batch, k, 3, 4), np.float32),
        }

    def _outputs(self, states: Sequence[SequenceState], detect: list[bool]) -> dict:
        out = self.empty_outputs(len(states))
        out["DETECTED"][:, 0] = detect
        for b, state in enumerate(states):
            for j, track in enumerate(state.tracks):
                for name, value in track.outputs.items():
                    out[name][b, j] = value
                box = box_from_landmarks(track.box_in_landmarks, track.landmarks)
                out["FACE_BOXES"][b, j] = np.append(box, track.score)
                out["TRACK_IDS"][b, j] = track.track_id
            out["FACE_COUNT"][b, 0] = len(state.tracks)
        return out


def _fits(detection: np.ndarray, landmarks: np.ndarray) -> bool:
    """Whether a detection's (3, 68) fit is of the detected face: the detection box's
    centre lies within the landmarks' box (a crop holding a second face, e.g. one passing
    in front, can pull the fit onto that one)."""
    x1, y1, x2, y2 = landmark_box(landmarks[None])[0]
    cx, cy = (detection[0] + detection[2]) / 2, (detection[1] + detection[3]) / 2
    return bool(x1 <= cx <= x2 and y1 <= cy <= y2)


def _jumped(expected: np.ndarray, landmarks: np.ndarray) -> bool:
    """Whether (3, 68) landmarks are further than MAX_JUMP of the face's size from the
    (3, 68) expected ones."""
    x1, y1, x2, y2 = landmark_box(expected[None])[0]
    gap = np.linalg.norm(landmarks[:2].mean(axis=1) - expected[:2].mean(axis=1))
    return bool(gap > MAX_JUMP * max(x2 - x1, y2 - y1))


class SequenceStore:
    """Sequence states by id: created on START, dropped on END or after ``idle_timeout``
    seconds without a frame. Thread-safe (the Triton model sweeps from a timer thread)."""

    def __init__(self, idle_timeout: float, clock: Callable[[], float] = time.monotonic):
        if idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be > 0 seconds, got {idle_timeout}")
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._states: dict[Hashable, tuple[SequenceState, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)

    def get(self, sequence_id: Hashable, start: bool) -> SequenceState:
        """The state of ``sequence_id``; a START frame (or an unknown id) begins afresh."""
        with self._lock:
            entry = self._states.get(sequence_id)
            state = SequenceState() if start or entry is None else entry[0]
            self._states[sequence_id] = (state, self.clock())
            return state

    def end(self, sequence_id: Hashable) -> None:
        with self._lock:
            self._states.pop(sequence_id, None)

    def sweep(self) -> int:
        """Drop sequences idle for longer than the timeout; returns how many."""
        now = self.clock()
        with self._lock:
            stale = [
                key for key, (_, seen) in self._states.items() if now - seen > self.idle_timeout
            ]
            for key in stale:
                del self._states[key]
        return len(stale)
