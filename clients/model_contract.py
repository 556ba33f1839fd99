"""What a client checks before it sends a frame, and what it gets back.

:func:`read_contract` reads the ensemble's metadata and config from the server once and
checks the tensor names and dtypes the clients rely on (a repository built by another
version of ``tddfa build`` is named, with the fix, before any frame is sent).
:class:`FrameResult` is one frame's answer, rows beyond the face count trimmed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from tddfa import graph
from tddfa.contract import IMAGE_INPUT
from tddfa_clients.errors import InferenceError, ModelMismatch, ProtocolMismatch, translate_error
from tddfa_clients.port_probe import detect_protocol, protocol_hint
from tddfa_clients.transport import dims

INPUT = IMAGE_INPUT
# Triton dtypes of every tensor a client sends or reads, from the graph declaration.
EXPECTED_DTYPES = {
    name: np_to_triton_dtype(np.dtype(tensor.dtype)) for name, tensor in graph.TENSORS.items()
}


@dataclasses.dataclass
class FrameResult:
    """The ensemble's answer for one frame, rows beyond ``face_count`` trimmed.

    rendered (H, W, 3) uint8 RGB (None when not requested; a CuPy array when the client
    was made with ``rendered_on_device``); boxes (F, 5) float32
    [x1, y1, x2, y2, score]; landmarks (F, 3, 68) float32 image coordinates; pose (F, 3)
    float32 yaw, pitch, roll degrees; params (F, 62) float32; vertices (F, 3, N) float32
    image space or None.
    """

    rendered: np.ndarray | None
    face_count: int
    boxes: np.ndarray
    landmarks: np.ndarray
    pose: np.ndarray
    params: np.ndarray
    vertices: np.ndarray | None = None
    track_ids: np.ndarray | None = None  # (F,) int32 from the sequence ensemble
    detected: bool | None = None  # sequence ensemble: the detector ran on this frame

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> FrameResult:
        """Build from {tensor name: array without the batch dimension}."""
        count = int(np.asarray(outputs["FACE_COUNT"]).reshape(-1)[0])

        def rows(name: str, tail: tuple[int, ...]) -> np.ndarray:
            if name not in outputs:
                return np.zeros((0, *tail), np.float32)
            return np.ascontiguousarray(outputs[name][:count])

        vertices = outputs.get("VERTICES")
        track_ids = outputs.get("TRACK_IDS")
        detected = outputs.get("DETECTED")
        return cls(
            rendered=outputs.get("RENDERED"),
            face_count=count,
            boxes=rows("FACE_BOXES", (5,)),
            landmarks=rows("LANDMARKS", (3, 68)),
            pose=rows("POSE", (3,)),
            params=rows("PARAMS", (62,)),
            vertices=None if vertices is None else np.ascontiguousarray(vertices[:count]),
            track_ids=None if track_ids is None else np.asarray(track_ids[:count], np.int32),
            detected=None if detected is None else bool(np.asarray(detected).reshape(-1)[0]),
        )


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A model input/output as the server declares it (shape without the batch dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def byte_size(self, image_shape: tuple[int, ...]) -> int | None:
        """Bytes of one item; -1 dims are taken from ``image_shape``; None when unknown."""
        dims = list(self.shape)
        if -1 in dims:
            if len(dims) != len(image_shape):
                return None
            dims = [i if d < 0 else d for d, i in zip(dims, image_shape, strict=True)]
        return int(np.prod(dims)) * np.dtype(triton_to_np_dtype(self.datatype)).itemsize


@dataclasses.dataclass(frozen=True)
class ModelContract:
    """The served model as this client needs it: its config, whether it batches (requests
    then carry a leading batch dimension of 1) and its tensors by name."""

    config: dict
    batched: bool
    specs: dict[str, TensorSpec]

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(triton_to_np_dtype(self.specs[name].datatype))


def read_contract(transport: Any, model: str, url: str, outputs: Sequence[str]) -> ModelContract:
    """Read ``model``'s metadata and config through ``transport``
    (:class:`tddfa_clients.transport.Transport`) and check IMAGE and ``outputs``.

    Raises ModelMismatch (not served, or other tensors), ProtocolMismatch (the port speaks
    the other protocol) or ServerUnavailable."""
    try:
        metadata = transport.model_metadata(model)
        config = transport.model_config(model)
    except Exception as exc:
        error = translate_error(exc)
        if isinstance(error, InferenceError):
            raise ModelMismatch(
                f"model {model!r} is not served at {url} ({error}); "
                "build and serve the repository with `tddfa build` and `tddfa serve`"
            ) from exc
        # no Triton answer: maybe the port speaks the other protocol (one quick probe
        # instead of retrying a port that will never answer in this protocol)
        hint = protocol_hint(url, transport.name, detect_protocol(url))
        if hint is not None:
            raise ProtocolMismatch(hint) from exc
        raise error from exc
    batched = int(config.get("max_batch_size", 0) or 0) > 0
    skip = 1 if batched else 0
    specs = {}
    for entry in [*metadata.get("inputs", []), *metadata.get("outputs", [])]:
        shape = dims(entry.get("shape", []))[skip:]
        specs[entry["name"]] = TensorSpec(entry["name"], entry["datatype"], shape)
    for name in (INPUT, *outputs):
        spec = specs.get(name)
        if spec is None:
            raise ModelMismatch(
                f"model {model!r} at {url} has no tensor {name}; it declares "
                f"{sorted(specs)}. Rebuild the repository with `tddfa build`."
            )
        expected = EXPECTED_DTYPES.get(name)
        if expected and spec.datatype != expected:
            raise ModelMismatch(
                f"{model}.{name} is {spec.datatype} on the server, this client needs "
                f"{expected}. Rebuild the repository with `tddfa build`."
            )
    return ModelContract(config, batched, specs)
