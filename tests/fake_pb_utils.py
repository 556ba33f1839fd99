"""Small fakes of the Python backend's module (``triton_python_backend_utils``) for the
adapter tests: requests, tensors, responses and errors, and a loader that runs a model
folder's model.py against them (as tensorrtllm_backend's tests do with dataclass fakes)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from tddfa_tools.build.model_config import load_config

NUMPY_TYPES = {"TYPE_FP32": np.float32, "TYPE_INT32": np.int32, "TYPE_UINT8": np.uint8}


@dataclasses.dataclass
class FakeTensor:
    name: str
    array: np.ndarray

    def is_cpu(self):
        return True

    def as_numpy(self):
        return self.array


@dataclasses.dataclass
class FakeRequest:
    tensors: dict
    parameters_json: str = ""
    requested_outputs: tuple = ()  # none: Triton then asks for every output

    def parameters(self):
        return self.parameters_json

    def requested_output_names(self):
        return list(self.requested_outputs)


@dataclasses.dataclass
class FakeResponse:
    output_tensors: list = dataclasses.field(default_factory=list)
    error: object = None


class FakeError:
    INVALID_ARG = "INVALID_ARG"
    INTERNAL = "INTERNAL"

    def __init__(self, message, code=None):
        self.message, self.code = message, code


def install(monkeypatch) -> types.ModuleType:
    """Put the fake module in place of the Python backend's (and forget the adapter and its
    tensor module, so they are imported again against the fake)."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor
    module.InferenceResponse = FakeResponse
    module.TritonError = FakeError
    module.Logger = types.SimpleNamespace(log_info=lambda msg: None, log_error=lambda msg: None)
    module.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    module.triton_string_to_numpy = NUMPY_TYPES.__getitem__
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    for name in ("tddfa_triton.tensors", "tddfa_triton.adapter", "tddfa_triton"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return module


def load_model(folder: Path, name: str):
    """The model in ``folder`` (config.pbtxt + 1/model.py), initialised as Triton would on
    a CPU instance."""
    spec = importlib.util.spec_from_file_location(f"model_{name}", folder / "1" / "model.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    model = loaded.TritonPythonModel()
    config = json_format.MessageToDict(
        load_config(folder / "config.pbtxt"), preserving_proto_field_name=True
    )
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_name": name,
            "model_version": "1",
            "model_repository": str(folder),
            "model_instance_kind": "CPU",
        }
    )
    return model
