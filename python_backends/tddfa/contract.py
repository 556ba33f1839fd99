"""The served contract: ensemble names, their outputs, request parameters.

The outputs (names, dtypes, per-frame shapes) come from the graph's declaration
(:mod:`tddfa.graph`); model configs, the wiring check, the in-process pipeline, the clients
and the tests read the names from here. Shapes are per frame (no batch axis); ``K`` stands
for the configured number of face slots (``max_faces``) and ``N`` for the dense mesh's
vertex count.
"""

from __future__ import annotations

import dataclasses

from tddfa.config import NUM_PARAMS, REGRESSOR_SIZE
from tddfa.graph import ENSEMBLES, SEQUENCE_ENSEMBLE, STATELESS_ENSEMBLE, TENSORS, Tensor
from tddfa.runners import NETWORK_IO

Output = Tensor  # name, dtype (numpy name), per-frame shape ("K" = max faces), doc

ENSEMBLE_OUTPUTS: tuple[Output, ...] = tuple(
    TENSORS[name] for name in ENSEMBLES[STATELESS_ENSEMBLE].outputs
)
# Only the sequence ensemble has them: one id per face slot, stable across the sequence's
# frames (0 for an empty slot; ids start at 1), and whether the detector ran.
TRACK_IDS = TENSORS["TRACK_IDS"]
DETECTED = TENSORS["DETECTED"]
SEQUENCE_OUTPUTS: tuple[Output, ...] = tuple(
    TENSORS[name] for name in ENSEMBLES[SEQUENCE_ENSEMBLE].outputs
)

OUTPUT_NAMES: tuple[str, ...] = tuple(o.name for o in ENSEMBLE_OUTPUTS)
SEQUENCE_OUTPUT_NAMES: tuple[str, ...] = tuple(o.name for o in SEQUENCE_OUTPUTS)
# What the video and image clients ask for by default (VERTICES is 3.7 MB a frame at K=8).
DEFAULT_OUTPUTS: tuple[str, ...] = tuple(n for n in OUTPUT_NAMES if n != "VERTICES")

IMAGE_INPUT = "IMAGE"

# Request parameter (Triton's per-request "parameters") choosing how faces are drawn.
RENDER_MODE_PARAMETER = "render_mode"
DEFAULT_RENDER_MODE = "shaded"
# Every value render_mode takes (docs/render_modes.md says what each one draws).
RENDER_MODES: tuple[str, ...] = (
    "shaded",  # lit grey mesh blended over the frame (3DDFA_V2's look; the default)
    "texture",  # a texture image mapped through the BFM UV coordinates, blended
    "depth",  # image-space depth as grey, nearer is brighter (3DDFA_V2's depth)
    "pncc",  # projected normalised coordinate code, colours from ncc_code (3DDFA_V2)
    "normals",  # image-space unit normals as colours, RGB = n / 2 + 1 / 2
    "wireframe",  # the visible triangle edges over the frame
    "landmarks",  # the 68 landmarks as dots, no mesh
    "pose",  # 3DDFA_V2's pose box, no mesh
    "uv",  # RENDERED is each face's UV texture map sampled from the frame (UV_MODE_SHAPE)
)
# In "uv" mode RENDERED is not the frame: it is (S, K * S, 3), face slot k's UV map in
# columns k*S .. (k+1)*S - 1, black where the slot is empty (S: face_renderer's uv_size).
UV_MODE = "uv"
UV_MODE_SHAPE = ("S", "K*S", 3)


def outputs_for(ensemble: str) -> tuple[Output, ...]:
    """The outputs of ``ensemble`` (STATELESS_ENSEMBLE or SEQUENCE_ENSEMBLE)."""
    if ensemble == STATELESS_ENSEMBLE:
        return ENSEMBLE_OUTPUTS
    if ensemble == SEQUENCE_ENSEMBLE:
        return SEQUENCE_OUTPUTS
    raise ValueError(
        f"unknown ensemble {ensemble!r}: use {STATELESS_ENSEMBLE!r} or {SEQUENCE_ENSEMBLE!r}"
    )


# ---------------------------------------------------------------- models called through BLS


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]  # without the batch axis; "K" = max faces, -1 = any size


@dataclasses.dataclass(frozen=True)
class ServedNetwork:
    """What a Python step sends to and reads from a served network model through BLS.

    A step's config names the model in the parameter ``<network>_model``
    (:func:`bls_parameter`): then the step calls it instead of running the network
    in-process. ``tddfa build`` writes that parameter for the onnxruntime and tensorrt
    flavours and for the python flavour's ``--networks models``;
    ``tddfa_tools.build.model_config.check_bls`` checks the model declares these tensors.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


_CROP = (3, REGRESSOR_SIZE, REGRESSOR_SIZE)
SERVED_NETWORKS: dict[str, ServedNetwork] = {
    # the whole detector (the Python Detector, or the one ONNX graph): frames -> best faces
    "face_detector": ServedNetwork(
        inputs=(TensorSpec(IMAGE_INPUT, "uint8", (-1, -1, 3)),),
        outputs=(
            TensorSpec("FACE_BOXES", "float32", ("K", 5)),
            TensorSpec("FACE_COUNT", "int32", (1,)),
        ),
    ),
    # the 3DMM regressor: the crops of one frame (F filled slots on the CPU, K on the GPU)
    "face_regressor": ServedNetwork(
        inputs=(TensorSpec(NETWORK_IO["face_regressor"][0][0], "float32", (-1, *_CROP)),),
        outputs=(TensorSpec(NETWORK_IO["face_regressor"][1][0], "float32", (-1, NUM_PARAMS)),),
    ),
}


def bls_parameter(network: str) -> str:
    """The config parameter that names the served model a step calls for ``network``."""
    return f"{network}_model"
