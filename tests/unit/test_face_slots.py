"""tddfa.face_slots.run_filled_slots: the regressor runs on filled face slots only (CPU) or on
all K slots with the empty ones zeroed (GPU's static shapes)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tddfa.face_slots import run_filled_slots
from tddfa.runners import make_runner


@pytest.fixture(scope="module")
def regressor(onnx_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("face_regressor")
    os.symlink(onnx_models["face_regressor"], folder / "model.onnx")
    return make_runner(folder, "cpu")


class _Recording:
    """Wraps a runner and records the input shapes it was given."""

    def __init__(self, runner):
        self.runner, self.shapes = runner, []
        self.input_names, self.output_names = runner.input_names, runner.output_names
        self.session = getattr(runner, "session", None)

    def run(self, inputs):
        self.shapes.append({n: tuple(a.shape) for n, a in inputs.items()})
        return self.runner.run(inputs)


def _crops(rng, batch, slots):
    return rng.uniform(0, 255, (batch, slots, 3, 120, 120)).astype(np.float32)


@pytest.mark.parametrize("faces", [1, 2, 5, 8])
def test_any_number_of_faces_runs_as_one_batch(regressor, faces):
    """The ONNX face axis is dynamic: (1, F, 3, 120, 120) for any F >= 1."""
    crops = _crops(np.random.default_rng(faces), 1, faces)
    out = regressor.run({"CROPS": crops})["PARAMS_NORM"]
    assert out.shape == (1, faces, 62)
    full = regressor.run({"CROPS": np.concatenate([crops, np.zeros_like(crops)], axis=1)})
    np.testing.assert_allclose(out, full["PARAMS_NORM"][:, :faces], rtol=1e-4, atol=1e-5)


def test_only_filled_slots_run_on_the_cpu(regressor):
    rng = np.random.default_rng(0)
    crops = _crops(rng, 3, 8)
    counts = np.array([[1], [0], [3]], np.int32)
    recording = _Recording(regressor)
    out = run_filled_slots(recording, {"CROPS": crops}, counts)["PARAMS_NORM"]
    assert recording.shapes == [{"CROPS": (1, 4, 3, 120, 120)}]  # 1 + 0 + 3 faces, not 24
    assert out.shape == (3, 8, 62) and out.dtype == np.float32
    everything = regressor.run({"CROPS": crops})["PARAMS_NORM"]
    for b, count in enumerate(counts[:, 0]):
        np.testing.assert_allclose(out[b, :count], everything[b, :count], rtol=1e-4, atol=1e-5)
        assert not out[b, count:].any()


def test_no_face_runs_nothing(regressor):
    recording = _Recording(regressor)
    crops = np.zeros((2, 8, 3, 120, 120), np.float32)
    out = run_filled_slots(recording, {"CROPS": crops}, np.zeros(2, np.int32))
    assert recording.shapes == []
    assert out["PARAMS_NORM"].shape == (2, 8, 62) and not out["PARAMS_NORM"].any()


def test_static_slots_run_everything_and_zero_the_empty_ones(regressor):
    rng = np.random.default_rng(1)
    crops = _crops(rng, 2, 8)
    recording = _Recording(regressor)
    out = run_filled_slots(recording, {"CROPS": crops}, np.array([2, 0]), static=True)
    assert recording.shapes == [{"CROPS": (2, 8, 3, 120, 120)}]  # fixed shape (CUDA graphs)
    want = regressor.run({"CROPS": crops})["PARAMS_NORM"]
    np.testing.assert_array_equal(out["PARAMS_NORM"][0, :2], want[0, :2])
    assert not out["PARAMS_NORM"][0, 2:].any() and not out["PARAMS_NORM"][1].any()
