"""Base class of the repository's Python models: config in, tddfa step built once,
requests batched through :func:`tddfa.batching.run_batched`, one response per request."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from tddfa.batching import run_batched
from tddfa.config import PipelineConfig


@dataclasses.dataclass(frozen=True)
class LoadContext:
    """What a step needs to build itself, read from Triton's ``initialize`` args."""

    model_name: str
    model_dir: Path  # the version folder: built weights and tables live here
    device: str  # "cpu" or "cuda:N"
    input_names: tuple[str, ...]
    parameters: dict[str, str]
    config: PipelineConfig


def _to_array(tensor) -> Any:
    if tensor.is_cpu():
        return tensor.as_numpy()
    import cupy  # GPU instances only: tensors stay on the device (DLPack)

    return cupy.from_dlpack(tensor.to_dlpack())


def _to_tensor(name: str, array, dtype) -> Any:
    array = array.astype(dtype, copy=False)
    if isinstance(array, np.ndarray):
        return pb_utils.Tensor(name, array)
    return pb_utils.Tensor.from_dlpack(name, array)  # a CuPy array: stays on the device


class StepModel:
    """Subclass and implement :meth:`build_step`; the rest is shared by every model."""

    def build_step(self, context: LoadContext):
        raise NotImplementedError

    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        parameters = {
            name: value["string_value"]
            for name, value in model_config.get("parameters", {}).items()
        }
        self.inputs = [(i["name"], bool(i.get("optional", False))) for i in model_config["input"]]
        kind = args.get("model_instance_kind", "CPU")
        device = "cpu" if kind == "CPU" else f"cuda:{args.get('model_instance_device_id', '0')}"
        self.context = LoadContext(
            model_name=args["model_name"],
            model_dir=Path(args["model_repository"]) / args["model_version"],
            device=device,
            input_names=tuple(name for name, _ in self.inputs),
            parameters=parameters,
            config=PipelineConfig.from_parameters(parameters),
        )
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"])
            for o in model_config["output"]
        }
        self.step = self.build_step(self.context)
        describe = getattr(self.step, "describe", None)
        details = [describe()] if describe else []
        if "bfm" in parameters:  # every model that uses the BFM says which one, once
            details.append(f"BFM {parameters['bfm']}")
        pb_utils.Logger.log_info(
            f"{self.context.model_name} loaded on {device}"
            + (f": {'; '.join(details)}" if details else "")
        )

    def _read(self, request) -> dict[str, Any] | Exception:
        inputs = {}
        for name, optional in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                if optional:
                    continue
                return ValueError(f"input {name} is missing")
            inputs[name] = _to_array(tensor)
        return inputs

    def execute(self, requests):
        try:
            results = run_batched(self.step, [self._read(r) for r in requests])
        except Exception as exc:  # an internal failure: answer every request, keep serving
            pb_utils.Logger.log_error(f"{self.context.model_name}: {exc!r}")
            results = [RuntimeError(f"{self.context.model_name} failed: {exc}")] * len(requests)

        responses = []
        for result in results:
            if isinstance(result, Exception):
                code = (
                    pb_utils.TritonError.INVALID_ARG
                    if isinstance(result, ValueError)
                    else pb_utils.TritonError.INTERNAL
                )
                error = pb_utils.TritonError(f"{self.context.model_name}: {result}", code)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            tensors = [
                _to_tensor(name, result[name], dtype) for name, dtype in self.output_dtypes.items()
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        close = getattr(self.step, "close", None)
        if close:
            close()
