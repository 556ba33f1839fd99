"""The served graph in one place: every tensor the ensembles pass (public and internal) with
its dtype and per-frame shape, every step's inputs and outputs, each ensemble's steps.

Derived from it: the ``input``/``output`` sections of the step models' configs and the
ensembles' configs with their scheduling (``tddfa build`` writes them for the chosen K;
tests/unit/test_model_configs.py checks the committed model_repository/ files equal what
it generates at K = 8), the public contract (:mod:`tddfa.contract`), and the in-process
pipeline's wiring (:mod:`tddfa.pipeline` runs the same steps in the same order).

Shapes are per frame (the batch axis is Triton's); ``K`` stands for the configured number of
face slots (``max_faces``) and -1 for a size that varies (the frame's own). Ensembles map
every tensor under its own name, so a step's input is the tensor of that name produced by an
earlier step (or the ensemble's input).
"""

from __future__ import annotations

import dataclasses

from tddfa.config import NUM_EXP, NUM_LANDMARKS, NUM_PARAMS, NUM_SHAPE, NUM_VERTICES

K = "K"


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]  # per frame; "K" = max faces, -1 = the frame's own size
    doc: str = ""

    def dims(self, max_faces: int) -> list[int]:
        """The config dims (no batch axis) for ``max_faces`` face slots."""
        return [max_faces if d == K else int(d) for d in self.shape]


@dataclasses.dataclass(frozen=True)
class Step:
    """One model of the ensembles: the tensors it reads and writes, by name."""

    model: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Ensemble:
    name: str
    steps: tuple[str, ...]  # models, in the order they run
    outputs: tuple[str, ...]  # what a client may ask for, in the config's order
    inputs: tuple[str, ...] = ("IMAGE",)


TENSORS: dict[str, Tensor] = {
    t.name: t
    for t in (
        Tensor("IMAGE", "uint8", (-1, -1, 3), "RGB frame (H, W, 3), any size"),
        # public outputs
        Tensor("RENDERED", "uint8", (-1, -1, 3), "the frame with every face drawn (H, W, 3) RGB"),
        Tensor("FACE_COUNT", "int32", (1,), "faces found; rows past it are zeros"),
        Tensor("FACE_BOXES", "float32", (K, 5), "x1, y1, x2, y2, score in image pixels"),
        Tensor("LANDMARKS", "float32", (K, 3, NUM_LANDMARKS), "68 landmarks, image x, y, z"),
        Tensor("POSE", "float32", (K, 3), "yaw, pitch, roll in degrees"),
        Tensor("PARAMS", "float32", (K, NUM_PARAMS), "the 62 de-normalised 3DMM parameters"),
        Tensor("VERTICES", "float32", (K, 3, NUM_VERTICES), "dense mesh in image space"),
        Tensor("TRACK_IDS", "int32", (K,), "track id of each face slot, 0 = empty"),
        Tensor("DETECTED", "bool", (1,), "the detector ran on this frame"),
        # internal: copies of FACE_BOXES / FACE_COUNT for the later steps (Triton 2.51's
        # pruning drops a step whose output a client asks for alone while it also feeds
        # another step), and the aligned faces the renderer and vertex step read
        Tensor("DETECTIONS", "float32", (K, 5), "copy of FACE_BOXES for face_aligner"),
        Tensor("NUM_FACES", "int32", (1,), "copy of FACE_COUNT for the later steps"),
        Tensor("ALPHA_SHP", "float32", (K, NUM_SHAPE), "shape coefficients"),
        Tensor("ALPHA_EXP", "float32", (K, NUM_EXP), "expression coefficients"),
        Tensor("TRANSFORM", "float32", (K, 3, 4), "model -> image transform per face"),
    )
}

_ALIGNED = ("PARAMS", "POSE", "LANDMARKS", "ALPHA_SHP", "ALPHA_EXP", "TRANSFORM")
_FACES = ("ALPHA_SHP", "ALPHA_EXP", "TRANSFORM", "NUM_FACES")

STEPS: dict[str, Step] = {
    s.model: s
    for s in (
        Step("face_detector", ("IMAGE",), ("FACE_BOXES", "FACE_COUNT", "DETECTIONS", "NUM_FACES")),
        Step("face_aligner", ("IMAGE", "DETECTIONS", "NUM_FACES"), _ALIGNED),
        Step(
            "face_tracker",
            ("IMAGE",),  # plus the sequence batcher's controls (its config's control_input)
            ("FACE_BOXES", "FACE_COUNT", "NUM_FACES", "TRACK_IDS", "DETECTED", *_ALIGNED),
        ),
        Step("face_renderer", ("IMAGE", *_FACES), ("RENDERED",)),
        Step("face_vertices", _FACES, ("VERTICES",)),
    )
}

_PUBLIC = ("RENDERED", "FACE_COUNT", "FACE_BOXES", "LANDMARKS", "POSE", "PARAMS", "VERTICES")
STATELESS_ENSEMBLE = "tddfa"
SEQUENCE_ENSEMBLE = "tddfa_track"
ENSEMBLES: dict[str, Ensemble] = {
    e.name: e
    for e in (
        # one frame per request, no state: every frame is detected anew
        Ensemble(
            STATELESS_ENSEMBLE,
            ("face_detector", "face_aligner", "face_renderer", "face_vertices"),
            _PUBLIC,
        ),
        # a Triton sequence: faces tracked from frame to frame (state in face_tracker)
        Ensemble(
            SEQUENCE_ENSEMBLE,
            ("face_tracker", "face_renderer", "face_vertices"),
            (*_PUBLIC, "TRACK_IDS", "DETECTED"),
        ),
    )
}


def check_graph() -> list[str]:
    """Problems with the declaration itself (empty list = consistent): unknown tensors, a
    step input no earlier step produces, an ensemble output none of its steps produces."""
    problems = [
        f"{s.model}: unknown tensor {n!r}"
        for s in STEPS.values()
        for n in (*s.inputs, *s.outputs)
        if n not in TENSORS
    ]
    for ensemble in ENSEMBLES.values():
        available = set(ensemble.inputs)
        for model in ensemble.steps:
            step = STEPS[model]
            problems += [
                f"{ensemble.name} -> {model}: {n!r} is not produced by an earlier step"
                for n in step.inputs
                if n not in available
            ]
            available.update(step.outputs)
        problems += [
            f"{ensemble.name}: output {n!r} is produced by none of its steps"
            for n in ensemble.outputs
            if n not in available
        ]
    return problems
