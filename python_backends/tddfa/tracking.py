"""Face tracking across the frames of a sequence (the ``tddfa_track`` ensemble).

As in the original 3DDFA_V2 video demos, a tracked frame does not run the detector: each
face is cropped where the previous frames put it. Where the original squares the
landmarks' bounding box (docs/models.md 3, tracking), this tracker carries the face's
detection box along with its landmarks: at detection it records where the box sits
relative to the landmarks' bounding box, and on later frames it puts the box back at the
same place relative to where the face is expected (the smoothed landmarks moved on by
the face's velocity) and crops with the detection rule (tddfa.roi). A face that does not
move is therefore cropped exactly as its detection was, so tracked results equal
per-frame ones on still segments and cannot drift.

The detector runs on a sequence's first frame, every ``track_detect_every`` frames (to find
faces that entered) and on any frame where a track was lost. A tracked face is lost when
FaceBoxes on its own crop no longer sees a face, when its crop is implausible (too small,
the face leaving the frame), when its fit jumps away from where it was expected (pulled
onto another face passing in front) or when another track took its place (two tracks on
one face: the one whose identity fits keeps it); checks: tddfa.tracks. On a detection frame
tracked faces keep their tracked crop; each detection that overlaps one only moves its
box a little towards the detector's (``track_box_blend``: boxes do not jump at
re-detection). Other detections are regressed from their detection crop and either take
back the id of a lost track (expected near there, same identity: a face that was hidden
behind another one) or start a new track.

Smoothing (tddfa.smoothing): each track holds its identity (tddfa.identity) and filters
its pose and expression; every output (landmarks, pose, params, mesh, box) derives from
the smoothed state, so they agree with each other. The per-face score is FaceBoxes' score
on the face's tracked crop (the detection score on the frame a track starts).

State per sequence (tddfa.sequence_store): a few kilobytes of host memory per face plus
its last crop (57 kB, on the frames' device) for the image motion; faces are described in
tddfa.tracks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from tddfa import image_motion, params, roi
from tddfa.aligner import Aligner
from tddfa.association import box_from_landmarks, box_relative_to, match_boxes, match_identities
from tddfa.config import NUM_EXP, NUM_SHAPE, REGRESSOR_SIZE, PipelineConfig
from tddfa.detector import Detector
from tddfa.identity import IdentityEstimate
from tddfa.sequence_store import SequenceState
from tddfa.smoothing import FaceFilter, FaceGeometry, SmoothingConfig, crop_scale
from tddfa.tracks import Measured, Track, drop_duplicates, fits, jumped, still_a_face
from tddfa.xp import get_xp, to_numpy

# What the tracker reads of a regression; every output is derived again from the smoothed
# state (Tracker._smooth).
MEASURED = ("LANDMARKS", "ALPHA_SHP", "ALPHA_EXP", "TRANSFORM")


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
            self.aligner.regress(crops, device_counts), device_rois, device_counts, MEASURED
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
        filled, scores = self._face_check(crops, mask)
        gray = image_motion.gray(filled)  # (faces, 120, 120) in slot order
        height, width = images.shape[1:3]
        slot = 0
        pending = []  # (frame, track index, face) waiting for their image motion
        for i, b in enumerate(rows):
            state = states[b]
            cfg = state.config
            for j, track in enumerate(state.tracks):
                face = Measured(
                    {name: array[i, j] for name, array in aligned.items()},
                    rois[i, j],
                    float(scores[i, j]),
                    gray[slot],
                )
                slot += 1
                landmarks = face.outputs["LANDMARKS"]
                if not still_a_face(face.score, face.roi, landmarks, height, width, cfg) or jumped(
                    track.next_landmarks, landmarks
                ):
                    continue
                found[b][j] = face
                uses_motion = cfg.smoothing and cfg.smoothing_filter and cfg.smoothing_motion
                if uses_motion and track.crop is not None:
                    pending.append((b, j, face))
        self._image_motion(states, pending)
        for b in rows:
            drop_duplicates(states[b].tracks, found[b], states[b].config.track_appearance)
        return found

    def _face_check(self, crops: Any, mask: np.ndarray) -> tuple[Any, np.ndarray]:
        """The filled slots' crops (faces, 3, 120, 120) in slot order and the (rows, K)
        face-check scores of every slot (0 where empty)."""
        xp = get_xp(crops)
        filled = crops[xp.asarray(mask)] if xp is not np else crops[mask]
        scores = np.zeros(mask.shape, np.float32)
        scores[mask] = to_numpy(self.detector.face_scores(filled))
        return filled, scores

    def _image_motion(self, states: Sequence[SequenceState], pending: list) -> None:
        """Each pending face's anchor displacement since its track's last crop. Each crop's
        spectrum is computed once: as this frame's, then kept as the track's previous one."""
        if not pending:
            return
        tracks = [states[b].tracks[j] for b, j, _ in pending]
        faces = [face for _, _, face in pending]
        xp = get_xp(faces[0].crop)
        unknown = [t for t in tracks if t.spectrum is None]
        if unknown:
            spectra = image_motion.spectrum(xp.stack([t.crop for t in unknown]))
            for track, spectrum in zip(unknown, spectra, strict=True):
                track.spectrum = spectrum
        current = image_motion.spectrum(xp.stack([face.crop for face in faces]))
        for face, spectrum in zip(faces, current, strict=True):
            face.spectrum = spectrum
        shift, peak = image_motion.spectrum_shift(
            xp.stack([t.spectrum for t in tracks]), current, REGRESSOR_SIZE
        )
        moved = image_motion.displacement(
            np.stack([t.anchor for t in tracks]),
            np.stack([t.roi for t in tracks]),
            np.stack([face.roi for face in faces]),
            to_numpy(shift),
            REGRESSOR_SIZE,
        )
        for face, d, p in zip(faces, moved, to_numpy(peak), strict=True):
            face.motion = (d, float(p))

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
            tracked = [
                box_from_landmarks(state.tracks[j].box_in_landmarks, found[j].outputs["LANDMARKS"])
                for j in seen
            ]
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
        _, checked = self._face_check(crops, mask)
        gray = image_motion.gray(crops)
        height, width = images.shape[1:3]
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
            # a new face passes the checks that keep a tracked one: a detection the next
            # frame would drop (a face leaving the frame, a false detection) starts no
            # track, so it neither flickers for a frame nor makes that frame detect again
            cfg = states[b].config
            faces = [
                f
                for j, f in enumerate(faces)
                if fits(f.detection, f.outputs["LANDMARKS"])
                and still_a_face(
                    float(checked[i, j]), f.roi, f.outputs["LANDMARKS"], height, width, cfg
                )
            ]
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
                # it moved unseen: restart its motion
                track.filter, track.crop, track.spectrum = None, None, None
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
            track.crop, track.spectrum = face.crop, face.spectrum
            track.roi, track.missing = face.roi, 0
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
