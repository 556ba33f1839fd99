"""The Triton adapter (tddfa_triton.StepModel) with small fakes of the Python backend's
request, tensor and response types: one response per request, in order, errors isolated."""

import dataclasses
import importlib.util
import json
import sys
import types

import numpy as np
import pytest
from google.protobuf import json_format

from tddfa_tools.model_config import load_config


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

    def parameters(self):
        return self.parameters_json


@dataclasses.dataclass
class FakeResponse:
    output_tensors: list = dataclasses.field(default_factory=list)
    error: object = None


class FakeError:
    INVALID_ARG = "INVALID_ARG"
    INTERNAL = "INTERNAL"

    def __init__(self, message, code=None):
        self.message, self.code = message, code


@pytest.fixture()
def pb_utils(monkeypatch):
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor
    module.InferenceResponse = FakeResponse
    module.TritonError = FakeError
    module.Logger = types.SimpleNamespace(log_info=lambda msg: None, log_error=lambda msg: None)
    module.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    module.triton_string_to_numpy = lambda s: {"TYPE_FP32": np.float32, "TYPE_INT32": np.int32}[s]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    monkeypatch.delitem(sys.modules, "tddfa_triton.adapter", raising=False)
    monkeypatch.delitem(sys.modules, "tddfa_triton", raising=False)
    return module


def load_model(repository, name):
    spec = importlib.util.spec_from_file_location(
        f"model_{name}", repository / name / "1" / "model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel()


def initialize(model, repository, name):
    as_json = json_format.MessageToDict(
        load_config(repository / name / "config.pbtxt"), preserving_proto_field_name=True
    )
    model.initialize(
        {
            "model_config": json.dumps(as_json),
            "model_name": name,
            "model_version": "1",
            "model_repository": str(repository / name),
            "model_instance_kind": "CPU",
        }
    )


def image_request(shape, dtype=np.uint8):
    return FakeRequest({"IMAGE": FakeTensor("IMAGE", np.zeros(shape, dtype))})


def test_detector_answers_each_request_in_order(pb_utils, built_repository):
    model = load_model(built_repository, "face_detector")
    initialize(model, built_repository, "face_detector")
    requests = [
        image_request((1, 360, 640, 3)),
        image_request((1, 360, 640, 4)),  # 4 channels: refused
        FakeRequest({}),  # IMAGE missing
        image_request((1, 720, 1280, 3)),
        image_request((1, 360, 640, 3)),
    ]
    responses = model.execute(requests)
    assert len(responses) == len(requests)
    ok = [0, 3, 4]
    for i, response in enumerate(responses):
        if i in ok:
            assert response.error is None
            names = [t.name for t in response.output_tensors]
            assert names == ["FACE_BOXES", "FACE_COUNT", "DETECTIONS", "NUM_FACES"]
            assert response.output_tensors[0].array.shape == (1, 8, 5)
            assert response.output_tensors[1].array.tolist() == [[0]]  # blank frames
        else:
            assert response.error.code == FakeError.INVALID_ARG
    # the exact problem and fix reach the client, prefixed by the model that refused it
    assert responses[1].error.message == (
        "face_detector: IMAGE must be uint8 (H, W, 3) RGB, got uint8 (360, 640, 4) "
        "(4 channels, RGBA?): drop the alpha channel, e.g. image[..., :3]"
    )
    assert responses[2].error.message == "face_detector: input IMAGE is missing"


def test_internal_failure_answers_every_request(pb_utils, built_repository):
    model = load_model(built_repository, "face_detector")
    initialize(model, built_repository, "face_detector")

    def explode(inputs):
        raise RuntimeError("boom")

    model.step.run = explode
    responses = model.execute([image_request((1, 64, 64, 3)), image_request((1, 64, 64, 3))])
    assert [r.error.code for r in responses] == [FakeError.INTERNAL] * 2
    assert "boom" in responses[0].error.message
