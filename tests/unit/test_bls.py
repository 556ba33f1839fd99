"""tddfa_triton.bls against a fake of the Python backend's BLS API: what is sent to the served
model, what comes back, errors that name the model, and the Detector interface over it.
The real thing, on a real tritonserver: tests/integration/test_bls.py."""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tddfa.config import PipelineConfig
from tddfa.face_slots import run_filled_slots


@dataclasses.dataclass
class FakeTensor:
    tensor_name: str
    array: np.ndarray

    def name(self):
        return self.tensor_name

    def is_cpu(self):
        return True

    def as_numpy(self):
        return self.array


@dataclasses.dataclass
class FakeBlsResponse:
    outputs: dict
    error_message: str | None = None

    def has_error(self):
        return self.error_message is not None

    def error(self):
        return types.SimpleNamespace(message=lambda: self.error_message)


class FakeServer:
    """The served models: name -> function({input: array}) -> {output: array} or an error."""

    def __init__(self):
        self.models = {}
        self.requests = []  # (model, {input: array}, requested outputs, preferred memory)

    def respond(self, model, inputs, outputs, memory):
        self.requests.append((model, inputs, outputs, memory))
        if model not in self.models:
            return FakeBlsResponse({}, f"Request for unknown model: '{model}' is not found")
        result = self.models[model](inputs)
        return FakeBlsResponse({n: a for n, a in result.items() if n in outputs})


@pytest.fixture()
def server(monkeypatch):
    server = FakeServer()
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor
    module.TRITONSERVER_MEMORY_CPU, module.TRITONSERVER_MEMORY_GPU = "CPU", "GPU"
    module.PreferredMemory = lambda kind, device=0: (kind, device)

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs, preferred_memory):
            self.args = (
                model_name,
                {t.name(): t.as_numpy() for t in inputs},
                list(requested_output_names),
                preferred_memory,
            )

        def exec(self):
            return server.respond(*self.args)

    module.InferenceRequest = InferenceRequest
    module.get_output_tensor_by_name = lambda response, name: (
        FakeTensor(name, response.outputs[name]) if name in response.outputs else None
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    for name in (
        "tddfa_triton.bls",
        "tddfa_triton.tensors",
        "tddfa_triton.adapter",
        "tddfa_triton",
    ):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return server


def regressor(inputs):
    crops = inputs["CROPS"]
    return {"PARAMS_NORM": np.repeat(crops.mean(axis=(2, 3, 4))[..., None], 62, axis=-1)}


def test_runner_sends_inputs_and_reads_outputs(server):
    from tddfa_triton.bls import BlsRunner

    server.models["face_regressor"] = regressor
    runner = BlsRunner("face_regressor", ["CROPS"], ["PARAMS_NORM"])
    crops = np.full((2, 3, 3, 120, 120), 7.0, np.float32)
    out = runner.run({"CROPS": crops})
    assert out["PARAMS_NORM"].shape == (2, 3, 62) and np.all(out["PARAMS_NORM"] == 7.0)
    model, sent, outputs, memory = server.requests[0]
    assert model == "face_regressor" and outputs == ["PARAMS_NORM"] and memory == ("CPU", 0)
    assert sent["CROPS"].dtype == np.float32 and sent["CROPS"].shape == crops.shape
    assert runner.describe() == "BLS to model face_regressor"


def test_gpu_instances_ask_for_the_response_on_their_gpu(server):
    from tddfa_triton.bls import BlsRunner

    assert BlsRunner("m", ["X"], ["Y"], device_id=1)._memory == ("GPU", 1)


def test_errors_name_the_model(server):
    from tddfa_triton.bls import BlsRunner

    with pytest.raises(RuntimeError, match="'face_regressor' failed: Request for unknown model"):
        BlsRunner("face_regressor", ["CROPS"], ["PARAMS_NORM"]).run(
            {"CROPS": np.zeros((1, 1, 3, 120, 120), np.float32)}
        )
    server.models["face_regressor"] = lambda inputs: {"OTHER": np.zeros(1)}
    with pytest.raises(RuntimeError, match=r"'face_regressor' lacks the outputs \['PARAMS_NORM'\]"):
        BlsRunner("face_regressor", ["CROPS"], ["PARAMS_NORM"]).run(
            {"CROPS": np.zeros((1, 1, 3, 120, 120), np.float32)}
        )
    with pytest.raises(ValueError, match="missing inputs"):
        BlsRunner("face_regressor", ["CROPS"], ["PARAMS_NORM"]).run({})


def test_filled_slots_only_and_no_call_for_a_frame_without_faces(server):
    from tddfa_triton.bls import BlsRunner

    server.models["face_regressor"] = regressor
    runner = BlsRunner(
        "face_regressor", ["CROPS"], ["PARAMS_NORM"], face_shapes={"PARAMS_NORM": (62,)}
    )
    crops = np.arange(2 * 4, dtype=np.float32).reshape(2, 4, 1, 1, 1) * np.ones((1, 1, 3, 120, 120))
    out = run_filled_slots(runner, {"CROPS": crops.astype(np.float32)}, np.array([0, 0]))
    assert out["PARAMS_NORM"].shape == (2, 4, 62) and not out["PARAMS_NORM"].any()
    assert server.requests == []  # no faces: no request
    out = run_filled_slots(runner, {"CROPS": crops.astype(np.float32)}, np.array([2, 1]))
    assert [r[1]["CROPS"].shape for r in server.requests] == [(1, 3, 3, 120, 120)]
    np.testing.assert_array_equal(out["PARAMS_NORM"][..., 0], [[0, 1, 0, 0], [4, 0, 0, 0]])


def detector(boxes_per_frame):
    """A served face_detector: frame b gets ``boxes_per_frame(frame)`` rows (best first)."""

    def run(inputs):
        images = inputs["IMAGE"]
        assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3
        boxes = np.zeros((len(images), 8, 5), np.float32)
        counts = np.zeros((len(images), 1), np.int32)
        for b, frame in enumerate(images):
            rows = boxes_per_frame(frame)
            if rows:
                boxes[b, : len(rows)], counts[b] = rows, len(rows)
        return {"FACE_BOXES": boxes, "FACE_COUNT": counts}

    return run


def test_detector_batches_by_the_served_max_batch_size(server):
    from tddfa_triton.bls import BlsDetector

    server.models["face_detector"] = detector(lambda f: [[0, 0, 10, 10, f[0, 0, 0] / 100]])
    bls = BlsDetector("face_detector", PipelineConfig(), max_batch_size=4)
    frames = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 48, 3), np.uint8)
    bls.validate(frames)
    boxes, counts = bls(frames)
    assert [r[1]["IMAGE"].shape[0] for r in server.requests] == [4, 4, 2]
    assert boxes.shape == (10, 8, 5) and counts.dtype == np.int32 and counts.tolist() == [1] * 10
    np.testing.assert_allclose(boxes[:, 0, 4], np.arange(10) / 100)


def test_detector_refuses_bad_frames_before_any_call(server):
    from tddfa_triton.bls import BlsDetector

    bls = BlsDetector("face_detector", PipelineConfig())
    with pytest.raises(ValueError, match="4 channels"):
        bls.validate(np.zeros((1, 64, 64, 4), np.uint8))
    with pytest.raises(ValueError, match="smaller than the minimum"):
        bls.validate(np.zeros((1, 8, 8, 3), np.uint8))
    assert server.requests == []


def test_face_scores_send_each_crop_as_a_uint8_frame(server):
    from tddfa_triton.bls import BlsDetector

    seen = []

    def best(frame):
        seen.append(frame)
        score = frame.mean() / 255
        return [[0, 0, 5, 5, score], [0, 0, 3, 3, score / 2]] if score > 0.1 else []

    server.models["face_detector"] = detector(best)
    bls = BlsDetector("face_detector", PipelineConfig(), max_batch_size=8)
    crops = np.stack([np.full((3, 120, 120), v, np.float32) for v in (0.4, 127.6, 255.0)])
    scores = bls.face_scores(crops)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, [0.0, 128 / 255, 1.0], rtol=1e-6)  # no box: score 0
    assert seen[1].shape == (120, 120, 3) and seen[1].dtype == np.uint8 and seen[1][0, 0, 0] == 128
    assert bls.face_scores(np.zeros((0, 3, 120, 120), np.float32)).shape == (0,)
    assert len(server.requests) == 1


def test_load_context_calls_the_model_its_config_names(server, tmp_path: Path, monkeypatch):
    from tddfa_triton.adapter import LoadContext
    from tddfa_triton.bls import BlsDetector, BlsRunner

    made = []
    monkeypatch.setattr("tddfa.runners.make_runner", lambda folder, *a, **k: made.append(folder))
    context = LoadContext(
        model_name="face_tracker",
        model_dir=tmp_path,
        device="cpu",
        input_names=("IMAGE",),
        parameters={"face_regressor_model": "regressor_v2", "face_detector_model": "detector"},
        config=PipelineConfig(),
        max_batch_size=4,
    )
    runner = context.network("face_regressor")
    assert isinstance(runner, BlsRunner) and runner.model_name == "regressor_v2"
    assert (runner.input_names, runner.output_names) == (["CROPS"], ["PARAMS_NORM"])
    assert runner.face_shapes == {"PARAMS_NORM": (62,)}
    found = context.detector()
    assert isinstance(found, BlsDetector) and found.runner.model_name == "detector"
    assert found.max_batch_size == 4 and made == []
    in_process = dataclasses.replace(context, parameters={})
    assert not isinstance(in_process.detector(), BlsDetector)
    in_process.network("face_regressor")
    assert made == [tmp_path / "face_detector", tmp_path / "face_regressor"]
