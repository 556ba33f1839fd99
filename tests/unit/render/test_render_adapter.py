"""face_renderer's model.py under small fakes of the Python backend: each request's
render_mode parameter reaches its frames, one response per request, in order; a mixed batch
answers each request in its own mode and size; an unknown mode fails only its request."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_pb_utils import FakeError, FakeRequest, FakeTensor, install, load_model

from tddfa.contract import RENDER_MODE_PARAMETER, RENDER_MODES

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def model(monkeypatch, render_version, tmp_path):
    install(monkeypatch)
    folder = tmp_path / "face_renderer"
    shutil.copytree(REPO_ROOT / "model_repository" / "face_renderer", folder)
    for name in ("bfm.npz", "render_assets.npz"):
        (folder / "1" / name).symlink_to(render_version / name)
    instance = load_model(folder, "face_renderer")
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
