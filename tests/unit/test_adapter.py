"""The Triton adapter (tddfa_triton.StepModel) with small fakes of the Python backend's
request, tensor and response types: one response per request, in order, errors isolated."""

import dataclasses
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from tddfa_tools.model_config import load_config

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


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
    module.triton_string_to_numpy = lambda s: {"TYPE_FP32": np.float32}[s]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    monkeypatch.delitem(sys.modules, "tddfa_triton.adapter", raising=False)
    monkeypatch.delitem(sys.modules, "tddfa_triton", raising=False)
    return module


def load_model(name):
    spec = importlib.util.spec_from_file_location(
        f"model_{name}", REPOSITORY / name / "1" / "model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel()


def initialize(model, name):
    as_json = json_format.MessageToDict(
        load_config(REPOSITORY / name / "config.pbtxt"), preserving_proto_field_name=True
    )
    model.initialize(
        {
            "model_config": json.dumps(as_json),
            "model_name": name,
            "model_version": "1",
            "model_repository": str(REPOSITORY / name),
            "model_instance_kind": "CPU",
        }
    )


def image_request(shape, dtype=np.uint8):
    return FakeRequest({"IMAGE": FakeTensor("IMAGE", np.zeros(shape, dtype))})


def test_preprocess_answers_each_request_in_order(pb_utils):
    model = load_model("preprocess")
    initialize(model, "preprocess")
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
            assert names == ["DETECTOR_INPUT", "SCALE"]
            assert response.output_tensors[0].array.shape == (1, 3, 720, 1280)
        else:
            assert response.error.code == FakeError.INVALID_ARG
    # the exact problem and fix reach the client, prefixed by the model that refused it
    assert responses[1].error.message == (
        "preprocess: IMAGE must be uint8 (H, W, 3) RGB, got uint8 (360, 640, 4) "
        "(4 channels, RGBA?): drop the alpha channel, e.g. image[..., :3]"
    )
    assert responses[2].error.message == "preprocess: input IMAGE is missing"
    # the original's rule: width at most 1080, so a 1280x720 frame is scaled by 1080/1280
    assert responses[3].output_tensors[1].array[0, 0] == pytest.approx(1080 / 1280)
    assert responses[0].output_tensors[1].array[0, 0] == pytest.approx(1.0)


def test_internal_failure_answers_every_request(pb_utils):
    model = load_model("preprocess")
    initialize(model, "preprocess")

    def explode(inputs):
        raise RuntimeError("boom")

    model.step.run = explode
    responses = model.execute([image_request((1, 64, 64, 3)), image_request((1, 64, 64, 3))])
    assert [r.error.code for r in responses] == [FakeError.INTERNAL] * 2
    assert "boom" in responses[0].error.message
