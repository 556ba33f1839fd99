"""The face_renderer / face_vertices steps: contract, VERTICES, errors, the decoder."""

from __future__ import annotations

import numpy as np
import pytest

from tddfa.bfm import DenseDecoder
from tddfa.contract import RENDER_MODE_PARAMETER
from tddfa.params import apply_transform, landmark_vertices

FACE_INPUTS = ("ALPHA_SHP", "ALPHA_EXP", "TRANSFORM", "NUM_FACES")


def test_vertices_equal_the_bfm_formula_in_image_space(bfm, emma):
    """VERTICES = apply_transform(TRANSFORM, reshape_xyz(u + W_shp a + W_exp a)), zeros in
    empty slots."""
    from tddfa.render.step import VerticesStep

    step = VerticesStep(DenseDecoder(bfm))
    inputs = {name: emma[name] for name in FACE_INPUTS}
    step.validate(inputs)
    out = step.run(inputs)["VERTICES"]
    k = emma["ALPHA_SHP"].shape[1]
    assert out.shape == (1, k, 3, bfm.num_vertices) and out.dtype == np.float32
    count = int(emma["NUM_FACES"][0, 0])
    alpha = np.concatenate([emma["ALPHA_SHP"][0, :count], emma["ALPHA_EXP"][0, :count]], axis=1)
    basis = np.concatenate([bfm.w_shp, bfm.w_exp], axis=1).astype(np.float64)
    flat = bfm.u.astype(np.float64) + alpha.astype(np.float64) @ basis.T  # float64 reference
    model = np.swapaxes(flat.reshape(count, -1, 3), 1, 2)
    expected = apply_transform(emma["TRANSFORM"][0, :count], model)
    np.testing.assert_allclose(out[0, :count], expected, rtol=1e-5, atol=2e-3)
    assert not out[0, count:].any()
    assert np.allclose(out[0, :count, 2].min(axis=1), 0), "z starts at 0 per face"


def test_decoder_landmarks_are_the_landmark_rows(bfm, emma):
    decoder = DenseDecoder(bfm)
    count = int(emma["NUM_FACES"][0, 0])
    params = np.zeros((count, 62), np.float32)
    params[:, 12:52] = emma["ALPHA_SHP"][0, :count]
    params[:, 52:62] = emma["ALPHA_EXP"][0, :count]
    got = decoder.landmarks(emma["ALPHA_SHP"][0, :count], emma["ALPHA_EXP"][0, :count])
    np.testing.assert_allclose(got, landmark_vertices(params, bfm), rtol=1e-5, atol=0.5)
    image = apply_transform(emma["TRANSFORM"][0, :count], got)
    np.testing.assert_allclose(image[:, :2], emma["LANDMARKS"][0, :count, :2], atol=0.05)


def test_only_filled_slots_are_decoded(bfm, emma, render_step, monkeypatch):
    calls = []
    decode = render_step.decoder.vertices

    def spy(alpha_shp, alpha_exp):
        calls.append(len(alpha_shp))
        return decode(alpha_shp, alpha_exp)

    monkeypatch.setattr(render_step.decoder, "vertices", spy)
    inputs = {name: np.concatenate([emma[name]] * 3) for name in ("IMAGE", *FACE_INPUTS)}
    inputs["NUM_FACES"] = np.array([[3], [0], [1]], np.int32)
    modes = [{}, {}, {RENDER_MODE_PARAMETER: "landmarks"}]  # landmarks: no dense mesh
    out = render_step.run(inputs, modes)["RENDERED"]
    assert calls == [3]
    np.testing.assert_array_equal(out[1], emma["IMAGE"][0])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i.update(NUM_FACES=np.array([[9]], np.int32)), "NUM_FACES must lie in 0..8"),
        (lambda i: i.update(TRANSFORM=i["TRANSFORM"][:, :4]), r"TRANSFORM must have shape"),
        (lambda i: i.update(ALPHA_EXP=i["ALPHA_EXP"][..., :9]), r"ALPHA_EXP must have shape"),
        (lambda i: i.update(IMAGE=i["IMAGE"][0]), "IMAGE must have 4 dimensions"),
    ],
)
def test_bad_inputs_name_the_problem(render_step, emma, change, message):
    inputs = {name: emma[name].copy() for name in ("IMAGE", *FACE_INPUTS)}
    change(inputs)
    with pytest.raises(ValueError, match=message):
        render_step.validate(inputs)
        render_step.run(inputs)


def test_steps_through_run_batched(render_step, emma):
    """tddfa.batching hands each request's render_mode to the step; a bad one fails alone."""
    from tddfa.batching import run_batched

    request = {name: emma[name] for name in ("IMAGE", *FACE_INPUTS)}
    results = run_batched(
        render_step,
        [request, request, request],
        [{RENDER_MODE_PARAMETER: "depth"}, {RENDER_MODE_PARAMETER: "nope"}, {"other": 1}],
    )
    assert isinstance(results[1], ValueError) and "shaded" in str(results[1])
    depth, shaded = results[0]["RENDERED"], results[2]["RENDERED"]
    assert depth.shape == shaded.shape == emma["IMAGE"].shape
    assert (depth != shaded).any()


def test_the_model_folders_build_their_steps(render_version):
    """What face_renderer/1/model.py and face_vertices/1/model.py call."""
    from tddfa.render.step import RenderStep, VerticesStep, build_render_step, build_vertices_step

    step = build_render_step(render_version)
    try:
        assert isinstance(step, RenderStep) and step.renderer.has_texture
        assert "BFM" in step.describe()
    finally:
        step.close()
    assert isinstance(build_vertices_step(render_version), VerticesStep)
