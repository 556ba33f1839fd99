"""Face tracking across the frames of a sequence (the ``tddfa_track`` ensemble).

As in the original 3DDFA_V2 video demos, a tracked frame does not run the detector: each
face is cropped around the previous frame's landmarks. Where the original squares the
landmarks' bounding box (docs/models.md 3, "tracking mode"), this tracker carries the face's
detection box along with its landmarks: at detection it records where the box sits
relative to the landmarks' bounding box, and on tracked frames it puts the box back at the
same place relative to the previous frame's landmarks and crops with the detection rule
(docs/models.md 3). A face that does not move is therefore cropped exactly as its detection was,
so tracked results equal per-frame ones on still segments and cannot drift; a moving face's
box follows its landmarks.

The detector runs on a sequence's first frame, every ``track_detect_every`` frames (to find
faces that entered, and to end tracks of faces that left) and whenever a track is lost; a
lost frame is redone by detection, so no frame reports a face the tracker lost. Detections
are matched to the existing tracks by IoU, so a face keeps its track id; new faces get new
ids, unmatched tracks end.

Each track carries a One Euro filter (tddfa.smoothing) over its model->image transform and
shape/expression coefficients; every output (landmarks, pose, params, mesh) derives from
the smoothed state, so they agree with each other. The next crop is placed from the
smoothed landmarks too: a jittering crop makes the regressor jitter, so smoothing the crop
removes noise at its source (measured on a clip with known motion: benchmarks/RESULTS.md).

State is plain host memory per sequence (a few kilobytes); :class:`SequenceStore` keeps it
by sequence id and frees it on END or after an idle timeout.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from tddfa import params, roi
from tddfa.aligner import Aligner
from tddfa.config import NUM_EXP, NUM_SHAPE, PipelineConfig
from tddfa.detector import Detector
from tddfa.smoothing import OneEuroConfig, OneEuroFilter
from tddfa.xp import get_xp, to_numpy

STATE_SIZE = 12 + NUM_SHAPE + NUM_EXP  # transform (3x4) + coefficients
# A tracked face's landmarks must span at least this fraction of its crop's side (a crop
# that slid off the face yields a collapsed fit) and at most this much (a runaway crop).
MIN_LANDMARK_SPREAD = 0.25
MAX_LANDMARK_SPREAD = 1.0
# ... and at least this fraction of the landmarks' bounding box must be inside the frame.
MIN_VISIBLE_FRACTION = 0.5
# What a tracker step returns per frame (besides the aligner's outputs).
TRACK_OUTPUTS = ("FACE_BOXES", "FACE_COUNT", "TRACK_IDS", "DETECTED")


@dataclasses.dataclass
class Track:
    track_id: int
    landmarks: np.ndarray  # (3, 68) unsmoothed landmarks of the last frame: the next crop
    score: float  # detection score when last detected
    box_in_landmarks: np.ndarray  # (4,) the detection box relative to the landmarks' box
    filter: OneEuroFilter | None = None
    smoothed_landmarks: np.ndarray | None = None  # (3, 68), for the filter's speed


def box_relative_to(box: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(4+,) detection box, (3, 68) landmarks -> (4,) the box's centre offset and size in
    units of the landmarks' bounding box (x and y separately)."""
    lx1, ly1, lx2, ly2 = landmark_box(landmarks[None])[0].astype(np.float64)
    size = np.maximum([lx2 - lx1, ly2 - ly1], 1e-6)
    centre = np.array([lx1 + lx2, ly1 + ly2]) / 2
    b = np.asarray(box[:4], np.float64)
    return np.concatenate(
        [
            (np.array([b[0] + b[2], b[1] + b[3]]) / 2 - centre) / size,
            np.array([b[2] - b[0], b[3] - b[1]]) / size,
        ]
    )


def box_from_landmarks(relative: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Inverse of :func:`box_relative_to` for new landmarks: (4,) float32 x1, y1, x2, y2."""
    lx1, ly1, lx2, ly2 = landmark_box(landmarks[None])[0].astype(np.float64)
    size = np.array([lx2 - lx1, ly2 - ly1])
    centre = np.array([lx1 + lx2, ly1 + ly2]) / 2 + relative[:2] * size
    half = relative[2:] * size / 2
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


@dataclasses.dataclass
class SequenceState:
    """Everything the tracker keeps about one sequence."""

    tracks: list[Track] = dataclasses.field(default_factory=list)
    next_track_id: int = 1
    frames: int = 0  # frames processed
    frames_since_detection: int = 0
    smoothing: bool | None = None  # the sequence's choice; None: the model's default


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, 4) x (N, 4) boxes (x1, y1, x2, y2) -> (M, N) intersection over union."""
    a, b = np.asarray(a, np.float64)[:, None, :4], np.asarray(b, np.float64)[None, :, :4]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """(K, 3, 68) -> (K, 4) bounding boxes of the 2D landmarks."""
    xy = landmarks[:, :2]
    return np.concatenate([xy.min(axis=2), xy.max(axis=2)], axis=1)


def match_detections(track_boxes: np.ndarray, detections: np.ndarray, threshold: float) -> dict:
    """Greedy IoU matching, best pairs first: {detection index: track index}."""
    if len(track_boxes) == 0 or len(detections) == 0:
        return {}
    overlap = iou(detections, track_boxes)
    pairs = sorted(
        ((overlap[d, t], d, t) for d in range(len(detections)) for t in range(len(track_boxes))),
        reverse=True,
    )
    matched: dict[int, int] = {}
    used_tracks: set[int] = set()
    for value, d, t in pairs:
        if value < threshold:
            break
        if d in matched or t in used_tracks:
            continue
        matched[d] = t
        used_tracks.add(t)
    return matched


class Tracker:
    """Runs a batch of frames, each from its own sequence, against that sequence's state.

    ``Tracker(config, detector, aligner, bfm).step(images, states)`` -> outputs for the
    batch (host numpy arrays) and updates ``states`` in place. ``detector`` is a
    :class:`tddfa.detector.Detector` or anything with its interface (``validate``,
    ``__call__``, ``face_scores``; the tracker scores filled face slots only), e.g. the BLS detector of
    ``tddfa_triton.bls`` that calls a served face_detector model.
    """

    def __init__(self, config: PipelineConfig, detector: Detector, aligner: Aligner):
        self.config = config
        self.detector = detector
        self.aligner = aligner
        self.bfm = aligner.bfm
        self.filter_config = OneEuroConfig(
            min_cutoff=config.smoothing_min_cutoff,
            beta=config.smoothing_beta,
            frame_rate=config.smoothing_frame_rate,
        )

    # ------------------------------------------------------------------ the batch
    def step(self, images: Any, states: Sequence[SequenceState]) -> dict[str, np.ndarray]:
        """Track one frame of each sequence.

        Args:
            images: (B, H, W, 3) uint8 RGB frames of one size (validated), numpy or CuPy.
            states: B sequence states, one per frame, all different sequences.

        Returns:
            Host arrays: FACE_BOXES (B,K,5), FACE_COUNT (B,1) int32, TRACK_IDS (B,K) int32,
            DETECTED (B,1) bool (the detector ran on this frame), and the aligner's
            PARAMS, POSE, LANDMARKS, ALPHA_SHP, ALPHA_EXP, TRANSFORM, all smoothed; slots
            in ascending track id, zeros past FACE_COUNT.
        """
        batch, k = len(states), self.config.max_faces
        faces: list[list[dict] | None] = [None] * batch
        detect = [self._due(state) for state in states]
        tracked = [b for b in range(batch) if not detect[b]]
        if tracked:
            for b, frame_faces in zip(tracked, self._track(images, states, tracked), strict=True):
                if frame_faces is None:  # a track was lost: redo this frame by detection
                    detect[b] = True
                else:
                    faces[b] = frame_faces
        detecting = [b for b in range(batch) if detect[b]]
        if detecting:
            for b, frame_faces in zip(
                detecting, self._detect(images, states, detecting), strict=True
            ):
                faces[b] = frame_faces
        return self._outputs(states, faces, detect, k)

    def _due(self, state: SequenceState) -> bool:
        every = self.config.track_detect_every
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

    def _align(self, images: Any, rois: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
        xp = get_xp(images)
        aligned = self.aligner.align(images, xp.asarray(rois), xp.asarray(counts))
        return {name: to_numpy(array) for name, array in aligned.items()}

    def _track(self, images: Any, states: Sequence[SequenceState], rows: list[int]) -> list:
        """Crop every track of the given frames around its last landmarks and regress.
        Returns per frame a list of faces, or None if any of its tracks was lost."""
        k = self.config.max_faces
        rois = np.zeros((len(rows), k, 4), np.float32)
        boxes = np.zeros((len(rows), k, 4), np.float32)
        counts = np.zeros(len(rows), np.int32)
        for i, b in enumerate(rows):
            tracks = states[b].tracks
            counts[i] = len(tracks)
            for j, track in enumerate(tracks):
                boxes[i, j] = box_from_landmarks(track.box_in_landmarks, track.landmarks)
            rois[i, : len(tracks)] = roi.roi_from_box(boxes[i, : len(tracks)])
        frames = self._select(images, rows)
        xp = get_xp(frames)
        device_counts = xp.asarray(counts)
        crops = self.aligner.crops(frames, xp.asarray(rois), device_counts)
        aligned = self.aligner.parameters(
            self.aligner.regress(crops, device_counts), xp.asarray(rois), device_counts
        )
        aligned = {name: to_numpy(array) for name, array in aligned.items()}
        mask = np.arange(k)[None, :] < counts[:, None]
        scores = np.zeros((len(rows), k), np.float32)
        # the face check on the filled slots only (the mask is on the host already)
        if xp is np:
            scores[mask] = self.detector.face_scores(crops[mask])
        else:
            scores[mask] = to_numpy(self.detector.face_scores(crops[xp.asarray(mask)]))
        height, width = images.shape[1:3]
        result = []
        for i, b in enumerate(rows):
            frame_faces = []
            for j, track in enumerate(states[b].tracks):
                face = {name: array[i, j] for name, array in aligned.items()}
                if scores[i, j] < self.config.track_min_face_score or not self._plausible(
                    rois[i, j], face["LANDMARKS"], height, width
                ):
                    frame_faces = None
                    break
                side = float(rois[i, j, 2] - rois[i, j, 0])
                face["ROI"] = rois[i, j]
                face["FACE_BOX"] = np.append(boxes[i, j], scores[i, j])
                face["TRACK"] = track
                face["SIDE"] = side
                frame_faces.append(face)
            result.append(frame_faces)
        return result

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

    def _detect(self, images: Any, states: Sequence[SequenceState], rows: list[int]) -> list:
        """Detect and regress as the stateless ensemble does, and match to the tracks."""
        frames = self._select(images, rows)
        boxes, counts = (to_numpy(a) for a in self.detector(frames))
        rois = self._box_rois(boxes, counts)
        refined = self._align(frames, rois, counts)
        result = []
        for i, b in enumerate(rows):
            n = int(counts[i])
            state = states[b]
            detected = []
            for j in range(n):
                face = {name: array[i, j] for name, array in refined.items()}
                face["ROI"] = rois[i, j]
                face["FACE_BOX"] = boxes[i, j]
                face["SIDE"] = float(rois[i, j, 2] - rois[i, j, 0])
                detected.append(face)
            previous = (
                landmark_box(np.stack([t.landmarks for t in state.tracks]))
                if state.tracks
                else np.zeros((0, 4))
            )
            matched = match_detections(previous, boxes[i, :n], self.config.track_iou_threshold)
            for j, face in enumerate(detected):
                face["DETECTION_BOX"] = boxes[i, j]  # placed against the crop landmarks later
                if j in matched:
                    face["TRACK"] = state.tracks[matched[j]]
                    face["TRACK"].score = float(boxes[i, j, 4])
                else:
                    face["TRACK"] = Track(
                        state.next_track_id, face["LANDMARKS"], float(boxes[i, j, 4]), np.zeros(4)
                    )
                    state.next_track_id += 1
            result.append(detected)
        return result

    def _box_rois(self, boxes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        batch, k = boxes.shape[:2]
        rois = roi.roi_from_box(boxes.reshape(batch * k, -1)).reshape(batch, k, 4)
        return np.where((np.arange(k)[None, :] < counts[:, None])[..., None], rois, 0)

    # ------------------------------------------------------------------ outputs
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

    def _outputs(
        self, states: Sequence[SequenceState], faces: list, detect: list[bool], k: int
    ) -> dict[str, np.ndarray]:
        batch = len(states)
        out = self.empty_outputs(batch)
        out["DETECTED"][:, 0] = detect
        for b, (state, frame_faces) in enumerate(zip(states, faces, strict=True)):
            frame_faces = sorted(frame_faces or [], key=lambda f: f["TRACK"].track_id)[:k]
            smooth = self.config.smoothing if state.smoothing is None else state.smoothing
            smoothing = self.filter_config if smooth else None
            for j, face in enumerate(frame_faces):
                smoothed = self._smooth(face, smoothing)
                for name, value in smoothed.items():
                    out[name][b, j] = value
                out["FACE_BOXES"][b, j] = face["FACE_BOX"]
                out["TRACK_IDS"][b, j] = face["TRACK"].track_id
            out["FACE_COUNT"][b, 0] = len(frame_faces)
            state.tracks = [face["TRACK"] for face in frame_faces]
            for face in frame_faces:  # the next crop: smoothed landmarks when smoothing
                track = face["TRACK"]
                smoothed = smoothing is not None and track.smoothed_landmarks is not None
                track.landmarks = track.smoothed_landmarks if smoothed else face["LANDMARKS"]
                if "DETECTION_BOX" in face:
                    track.box_in_landmarks = box_relative_to(face["DETECTION_BOX"], track.landmarks)
            state.frames += 1
            state.frames_since_detection = 1 if detect[b] else state.frames_since_detection + 1
        return out

    def _smooth(self, face: dict, smoothing: OneEuroConfig | None) -> dict[str, np.ndarray]:
        """The face's outputs from its (smoothed) transform and coefficients."""
        track: Track = face["TRACK"]
        transform, alpha_shp, alpha_exp = face["TRANSFORM"], face["ALPHA_SHP"], face["ALPHA_EXP"]
        if smoothing is not None:
            if track.filter is None:
                track.filter = OneEuroFilter(smoothing)
            displacement = 0.0
            if track.smoothed_landmarks is not None:
                step = face["LANDMARKS"][:2] - track.smoothed_landmarks[:2]
                displacement = float(np.linalg.norm(step.mean(axis=1)))
            state = track.filter(
                np.concatenate([transform.ravel(), alpha_shp, alpha_exp]), displacement
            ).astype(np.float32)
            transform = state[:12].reshape(3, 4)
            alpha_shp, alpha_exp = state[12 : 12 + NUM_SHAPE], state[12 + NUM_SHAPE :]
        landmarks = params.landmarks_from_transform(
            transform[None], alpha_shp[None], alpha_exp[None], self.bfm
        )[0]
        camera = params.transform_to_camera(transform[None], face["ROI"][None])[0]
        face_params = np.concatenate([camera, alpha_shp, alpha_exp]).astype(np.float32)
        track.smoothed_landmarks = landmarks
        return {
            "PARAMS": face_params,
            "POSE": params.pose_degrees(face_params[None])[0],
            "LANDMARKS": landmarks,
            "ALPHA_SHP": alpha_shp,
            "ALPHA_EXP": alpha_exp,
            "TRANSFORM": transform,
        }


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
