"""The ensembles' steps as plain objects: named arrays in, named arrays out.

Each class is what one Triton model runs (README, "Architecture"); the Triton adapter
(tddfa_triton) and the in-process pipeline (tddfa.pipeline) both use them, so served and
in-process results come from the same code. Arrays carry a leading batch axis B (frames);
K is the number of face slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tddfa.aligner import Aligner
from tddfa.config import parse_setting
from tddfa.detector import Detector
from tddfa.sequence_store import SEQUENCE_SETTINGS, SequenceStore
from tddfa.tracking import Tracker
from tddfa.xp import get_xp, to_numpy

Arrays = Mapping[str, Any]


def _require_rank(inputs: Arrays, ranks: Mapping[str, int]) -> None:
    for name, rank in ranks.items():
        if inputs[name].ndim != rank:
            raise ValueError(
                f"{name} must have {rank} dimensions including the batch, "
                f"got shape {tuple(inputs[name].shape)}"
            )


def _runner_name(runner: Any) -> str:
    describe = getattr(runner, "describe", None)
    return describe() if describe is not None else type(runner).__name__


def _counts(num_faces: Any) -> Any:
    """(B, 1) NUM_FACES -> (B,) int32, same array module."""
    return num_faces.reshape(-1).astype(get_xp(num_faces).int32, copy=False)


class DetectorStep:
    """IMAGE (B,H,W,3) uint8 -> FACE_BOXES (B,K,5), FACE_COUNT (B,1) int32 and their
    internal copies DETECTIONS, NUM_FACES (an ensemble output is never a step input)."""

    def __init__(self, detector: Detector):
        self.detector = detector

    def describe(self) -> str:
        return f"detector runner {_runner_name(self.detector.runner)}"

    def validate(self, inputs: Arrays) -> None:
        self.detector.validate(inputs["IMAGE"])

    def run(self, inputs: Arrays) -> dict[str, Any]:
        boxes, counts = self.detector(inputs["IMAGE"])
        counts = counts.reshape(-1, 1)
        return {"FACE_BOXES": boxes, "FACE_COUNT": counts, "DETECTIONS": boxes, "NUM_FACES": counts}


class AlignerStep:
    """IMAGE, DETECTIONS (B,K,5), NUM_FACES (B,1) -> PARAMS (B,K,62), POSE (B,K,3),
    LANDMARKS (B,K,3,68), ALPHA_SHP (B,K,40), ALPHA_EXP (B,K,10), TRANSFORM (B,K,3,4)."""

    def __init__(self, aligner: Aligner):
        self.aligner = aligner

    def describe(self) -> str:
        regressor = _runner_name(self.aligner.regressor)
        return f"regressor runner {regressor}; {self.aligner.bfm.description()}"

    def validate(self, inputs: Arrays) -> None:
        _require_rank(inputs, {"IMAGE": 4, "DETECTIONS": 3, "NUM_FACES": 2})

    def run(self, inputs: Arrays) -> dict[str, Any]:
        return self.aligner.align_boxes(
            inputs["IMAGE"], inputs["DETECTIONS"], _counts(inputs["NUM_FACES"])
        )


# Triton's sequence batcher control tensors (face_tracker's config.pbtxt names them).
SEQUENCE_CONTROLS = ("START", "END", "READY", "CORRID")


class TrackerStep:
    """One frame of each of B sequences -> the stateless outputs plus TRACK_IDS (B,K) int32
    and DETECTED (B,1) bool; the sequences' state lives in ``store`` (tddfa.sequence_store).

    Inputs: IMAGE and the sequence controls START, END, READY (B,1) and CORRID (B,1).
    """

    # per sequence, read on its START frame: the tracker's settings, e.g. "smoothing": false
    request_parameters = SEQUENCE_SETTINGS

    def __init__(self, tracker: Tracker, store: SequenceStore):
        self.tracker = tracker
        self.store = store

    def describe(self) -> str:
        cfg = self.tracker.config
        parts = [
            name
            for name, on in (
                ("identity held", cfg.smoothing_identity),
                ("pose/expression Kalman filter", cfg.smoothing_filter),
                ("image motion", cfg.smoothing_motion),
            )
            if on
        ]
        smoothing = f"smoothing ({', '.join(parts) or 'none'})" if cfg.smoothing else "no smoothing"
        return (
            f"tracking (detect every {cfg.track_detect_every} frames and when lost), "
            f"{smoothing}, idle timeout {self.store.idle_timeout:g} s"
        )

    def validate(self, inputs: Arrays) -> None:
        self.tracker.detector.validate(inputs["IMAGE"])
        missing = [name for name in ("START", "CORRID") if name not in inputs]
        if missing:
            raise ValueError(
                f"face_tracker needs the sequence controls {missing}: send the frame to the "
                "tddfa_track ensemble with a sequence id (sequence_id, sequence_start, "
                "sequence_end), or send it to tddfa for one frame without tracking"
            )

    def validate_parameters(self, parameters: Mapping[str, Any]) -> None:
        self.tracker.configure(_settings(parameters))

    def run(self, inputs: Arrays, parameters: list[dict] | None = None) -> dict[str, Any]:
        images = inputs["IMAGE"]
        flags = {
            name: to_numpy(inputs[name]).reshape(-1) if name in inputs else None
            for name in SEQUENCE_CONTROLS
        }
        batch = images.shape[0]
        ready = flags["READY"] if flags["READY"] is not None else np.ones(batch)
        ids = [_sequence_key(v) for v in flags["CORRID"]]
        rows = [b for b in range(batch) if ready[b]]
        out = self.tracker.empty_outputs(batch)  # frames that are not READY stay zero
        # A batch holds at most one frame per sequence (the sequence batcher's rule); should
        # it not, later frames of a sequence run after the earlier ones, in order.
        for part in _unique_runs(rows, ids):
            states = [self.store.get(ids[b], bool(flags["START"][b])) for b in part]
            for b, state in zip(part, states, strict=True):
                if state.frames == 0 and parameters:
                    state.settings = _settings(parameters[b])
            frames = images if len(part) == batch else images[_index(images, part)]
            for name, array in self.tracker.step(frames, states).items():
                out[name][part] = array
        for b in rows:
            if flags["END"] is not None and flags["END"][b]:
                self.store.end(ids[b])
        out["NUM_FACES"] = out["FACE_COUNT"]
        return out


def _settings(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A sequence's request parameters -> its tracker settings (ValueError naming a bad one)."""
    return {
        name: parse_setting(name, value, "request parameter")
        for name, value in parameters.items()
        if name in SEQUENCE_SETTINGS
    }


def _sequence_key(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value.item()


def _index(images: Any, rows: list[int]) -> Any:
    xp = get_xp(images)
    return xp.asarray(rows) if xp is not np else rows


def _unique_runs(rows: list[int], ids: list[Any]) -> list[list[int]]:
    """Split ``rows`` into consecutive runs in which no sequence id repeats."""
    runs: list[list[int]] = []
    current: list[int] = []
    seen: set = set()
    for b in rows:
        if ids[b] in seen:
            runs.append(current)
            current, seen = [], set()
        current.append(b)
        seen.add(ids[b])
    if current:
        runs.append(current)
    return runs


class NetworkStep:
    """A network served as a model of its own (python flavour, ``--networks models``): its
    inputs -> the runner's outputs, e.g. CROPS (B, F, 3, 120, 120) -> PARAMS_NORM (B, F, 62)."""

    def __init__(self, runner):
        self.runner = runner

    def describe(self) -> str:
        return f"runner {_runner_name(self.runner)}"

    def validate(self, inputs: Arrays) -> None:
        missing = sorted(set(self.runner.input_names) - set(inputs))
        if missing:
            raise ValueError(f"missing inputs {missing}")

    def run(self, inputs: Arrays) -> dict[str, Any]:
        return self.runner.run({name: inputs[name] for name in self.runner.input_names})
