"""Networks served as models of their own, called from a Python step through BLS.

In the onnxruntime and tensorrt flavours (and the python flavour's ``--networks models``)
the steps do not run the networks in-process: ``face_aligner`` sends its crops to the
``face_regressor`` model and ``face_tracker`` sends frames to ``face_detector``, through
Triton's business-logic scripting (``pb_utils.InferenceRequest(...).exec()``). The classes
here give those calls the interfaces the library already uses, so ``tddfa.aligner`` and
``tddfa.tracking`` do not know where a network runs:

- :class:`BlsRunner`: a :mod:`tddfa.runners` runner (``input_names``, ``output_names``,
  ``run({name: array}) -> {name: array}``);
- :class:`BlsDetector`: the :class:`tddfa.detector.Detector` interface the tracker uses.

This module is the only one that makes BLS calls. Arrays go as the adapter moves them:
device tensors through DLPack on GPU instances (the response is asked for on the same GPU),
numpy through DLPack under numpy 2 (see :mod:`tddfa_triton.tensors`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import triton_python_backend_utils as pb_utils

from tddfa.config import PipelineConfig
from tddfa.contract import IMAGE_INPUT
from tddfa.detector import validate_frames
from tddfa.xp import get_xp
from tddfa_triton.tensors import to_array, to_tensor


def checked_response(response, model_name: str, output_names: Sequence[str]):
    """``response`` of a BLS request to ``model_name`` once it is known to hold no error and
    every output in ``output_names``; else RuntimeError naming the model and the problem."""
    if response.has_error():
        raise RuntimeError(
            f"BLS request to model {model_name!r} failed: {response.error().message()} "
            "(is the model loaded? see the server log)"
        )
    missing = [
        name for name in output_names if pb_utils.get_output_tensor_by_name(response, name) is None
    ]
    if missing:
        raise RuntimeError(
            f"BLS response of model {model_name!r} lacks the outputs {missing}: its config must "
            "declare them (tddfa_tools.build.model_config.check_bls)"
        )
    return response


class BlsRunner:
    """A served model as a runner: ``run({input: array}) -> {output: array}``.

    Args:
        model_name: the served model (a config parameter ``<network>_model`` names it).
        input_names, output_names: the tensors sent and read back.
        device_id: the calling instance's GPU (arrays are CuPy, the response is asked for on
            that GPU), or None on a CPU instance (numpy in and out).
        face_shapes: per output, its shape past the (batch, face) axes, e.g.
            ``{"PARAMS_NORM": (62,)}``: lets ``tddfa.face_slots`` answer a frame without faces
            without a call.

    Inputs keep their dtype (the caller's arrays are what the model declares). Every call is
    one request; Triton's dynamic batcher may merge requests of several instances.
    """

    def __init__(
        self,
        model_name: str,
        input_names: Sequence[str],
        output_names: Sequence[str],
        device_id: int | None = None,
        face_shapes: Mapping[str, tuple[int, ...]] | None = None,
    ):
        self.model_name = model_name
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.device_id = device_id
        self.face_shapes = dict(face_shapes or {})
        if device_id is None:
            self._memory = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        else:
            self._memory = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, device_id)

    def describe(self) -> str:
        return f"BLS to model {self.model_name}"

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(
                f"missing inputs {missing}; {self.model_name} takes {self.input_names}"
            )
        tensors = [to_tensor(name, inputs[name], inputs[name].dtype) for name in self.input_names]
        request = pb_utils.InferenceRequest(
            model_name=self.model_name,
            requested_output_names=self.output_names,
            inputs=tensors,
            preferred_memory=self._memory,
        )
        response = checked_response(request.exec(), self.model_name, self.output_names)
        return {
            name: to_array(pb_utils.get_output_tensor_by_name(response, name), self.device_id, name)
            for name in self.output_names
        }


def _chunks(array: Any, size: int) -> list[Any]:
    return [array[start : start + size] for start in range(0, len(array), size)]


class BlsDetector:
    """:class:`tddfa.detector.Detector`'s interface over a served ``face_detector`` model
    (IMAGE -> FACE_BOXES, FACE_COUNT: the whole detector, Python model or one ONNX graph).

    Args:
        model_name: the served detector.
        config: the limits :meth:`validate` checks (the served model was built with the same
            pipeline values: ``tddfa build`` writes them into every config).
        device_id: as :class:`BlsRunner`.
        max_batch_size: frames per request (the served model's ``max_batch_size``; the
            builder gives every model the same one).
    """

    def __init__(
        self,
        model_name: str,
        config: PipelineConfig,
        device_id: int | None = None,
        max_batch_size: int = 1,
    ):
        self.config = config
        self.runner = BlsRunner(model_name, (IMAGE_INPUT,), ("FACE_BOXES", "FACE_COUNT"), device_id)
        self.max_batch_size = max(1, int(max_batch_size))

    def validate(self, images: Any) -> None:
        """The served detector's own checks, here, so a bad frame fails with its message."""
        validate_frames(images, self.config)

    def __call__(self, images: Any) -> tuple[Any, Any]:
        """(B, H, W, 3) uint8 frames -> boxes (B, K, 5) float32, counts (B,) int32."""
        xp = get_xp(images)
        parts = [
            self.runner.run({IMAGE_INPUT: chunk}) for chunk in _chunks(images, self.max_batch_size)
        ]
        boxes = xp.concatenate([part["FACE_BOXES"] for part in parts])
        counts = xp.concatenate([part["FACE_COUNT"] for part in parts]).reshape(-1)
        return boxes, counts.astype(xp.int32, copy=False)

    def face_scores(self, crops: Any) -> Any:
        """The best face score in each of (N, 3, S, S) float32 RGB 0..255 crops -> (N,).

        The served detector takes only uint8 frames, so each crop goes as a frame of its own
        (rounded to uint8; the crops hold whole grey levels already) and its score is the best
        box's (FACE_BOXES is sorted best first; 0 when no box passed ``score_threshold``,
        which the tracker's ``track_min_face_score`` rejects as well: both are 0.5 by
        default). What that costs: the detector keeps a 120x120 crop at scale 1 and pads it
        into its whole canvas (720x1280 by default), so every tracked face costs one
        full-canvas FaceBoxes run, about 50 times the in-process Detector's check (FaceBoxes
        on the 120x120 crop alone, ~2 % of a detection). In the BLS flavours a tracked frame
        therefore saves the regressor's ROI work but not detector time; tracking still gives
        track ids and smoothing. Scores can differ from the in-process check near the crop's
        border (the network sees the canvas padding instead of zero padding).
        """
        xp = get_xp(crops)
        if crops.shape[0] == 0:
            return xp.zeros(0, xp.float32)
        frames = xp.clip(xp.rint(crops), 0, 255).astype(xp.uint8).transpose(0, 2, 3, 1)
        boxes, _ = self(xp.ascontiguousarray(frames))
        return boxes[:, 0, 4].astype(xp.float32, copy=False)
