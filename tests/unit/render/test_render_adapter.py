"""face_renderer's model.py under small fakes of the Python backend: each request's
render_mode parameter reaches its frames, one response per request, in order; a mixed batch
answers each request in its own mode and size; an unknown mode fails only its request."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from tddfa.contract import RENDER_MODE_PARAMETER, RENDER_MODES
from tddfa_tools.model_config import load_config

REPO_ROOT = Path(__file__).resolve().parents[3]


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
def model(monkeypatch, render_version, tmp_path):
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor
    module.InferenceResponse = FakeResponse
    module.TritonError = FakeError
    module.Logger = types.SimpleNamespace(log_info=lambda msg: None, log_error=lambda msg: None)
    module.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    module.triton_string_to_numpy = lambda s: {"TYPE_UINT8": np.uint8}[s]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    monkeypatch.delitem(sys.modules, "tddfa_triton.adapter", raising=False)
    monkeypatch.delitem(sys.modules, "tddfa_triton", raising=False)

    folder = tmp_path / "face_renderer"
    shutil.copytree(REPO_ROOT / "model_repository" / "face_renderer", folder)
    for name in ("bfm.npz", "render_assets.npz"):
        (folder / "1" / name).symlink_to(render_version / name)
    spec = importlib.util.spec_from_file_location("face_renderer_model", folder / "1" / "model.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    instance = loaded.TritonPythonModel()
    config = json_format.MessageToDict(
        load_config(folder / "config.pbtxt"), preserving_proto_field_name=True
    )
    instance.initialize(
        {
            "model_config": json.dumps(config),
            "model_name": "face_renderer",
            "model_version": "1",
            "model_repository": str(folder),
            "model_instance_kind": "CPU",
        }
    )
    yield instance
    instance.finalize()


def request(emma, mode=None):
    names = ("IMAGE", "ALPHA_SHP", "ALPHA_EXP", "TRANSFORM", "NUM_FACES")
    parameters = json.dumps({RENDER_MODE_PARAMETER: mode}) if mode else ""
    return FakeRequest({n: FakeTensor(n, emma[n]) for n in names}, parameters)


def test_each_request_in_its_own_mode(model, emma):
    modes = [None, "uv", "sketch", "depth", "uv"]
    responses = model.execute([request(emma, m) for m in modes])
    assert len(responses) == len(modes)
    side = model.step.renderer.uv_size
    k = emma["ALPHA_SHP"].shape[1]
    for mode, response in zip(modes, responses, strict=True):
        if mode == "sketch":
            assert response.error.code == FakeError.INVALID_ARG
            assert "unknown render_mode 'sketch'" in response.error.message
            assert all(name in response.error.message for name in RENDER_MODES)
            continue
        assert response.error is None, response.error and response.error.message
        (tensor,) = response.output_tensors
        assert tensor.name == "RENDERED" and tensor.array.dtype == np.uint8
        expected = (1, side, k * side, 3) if mode == "uv" else emma["IMAGE"].shape
        assert tensor.array.shape == expected, mode
    shaded, depth = responses[0].output_tensors[0].array, responses[3].output_tensors[0].array
    assert (shaded != depth).any()
    first, second = (responses[i].output_tensors[0].array.astype(int) for i in (1, 4))
    assert np.abs(first - second).max() <= 1  # bilinear sampling from another tile
