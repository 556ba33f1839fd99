"""The coarse faces' decode (tddfa.render.coarse_decode): the drawn vertices as the full
decode gives them, and a box over the extra vertices equal to the box of all N, for many
faces, poses and sizes; the pictures as with every vertex decoded."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tddfa.bfm import DenseDecoder, SubsetDecoder
from tddfa.contract import RENDER_MODE_PARAMETER, RENDER_MODES
from tddfa.render.coarse_decode import CoarseDecoder


def _faces(bfm, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients around the regressor's (de-normalised mean +- 3 std) and similarity
    transforms of any rotation, 100-400 px faces."""
    rng = np.random.default_rng(seed)
    mean, std = bfm.param_mean[12:], bfm.param_std[12:]
    alpha = (mean + 3 * std * rng.uniform(-1, 1, (count, 50))).astype(np.float32)
    scale = rng.uniform(100, 400, count) / 155_000  # pixels per micrometre
    rotation = Rotation.random(count, random_state=seed).as_matrix()
    transforms = np.zeros((count, 3, 4), np.float32)
    transforms[:, :, :3] = scale[:, None, None] * rotation
    transforms[:, :2, 3] = rng.uniform(0, 700, (count, 2))
    return alpha, transforms


def _box(model: np.ndarray, transform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = transform[:, :3].astype(np.float64) @ model.astype(np.float64) + transform[:, 3:]
    return image.min(axis=1), image.max(axis=1)


def test_a_coarse_face_gets_its_drawn_vertices_and_the_box_of_all(bfm, render_assets):
    ids = np.unique(render_assets.lod_triangles)
    decoder, full = CoarseDecoder(bfm, ids), DenseDecoder(bfm)
    alpha, transforms = _faces(bfm, 40)
    compact = decoder(alpha, transforms)
    every = full.vertices(alpha[:, :40], alpha[:, 40:])
    for face in range(len(alpha)):
        rows = compact[face]
        assert rows.dtype == np.float32 and len(ids) <= rows.shape[1] < full.num_vertices
        np.testing.assert_allclose(rows[:, : len(ids)], every[face][:, ids], rtol=1e-5, atol=1)
        low, high = _box(rows, transforms[face])
        expected_low, expected_high = _box(every[face], transforms[face])
        # the same extreme vertices: equal up to float32 rounding of their decode
        np.testing.assert_allclose(low, expected_low, rtol=0, atol=1e-3)
        np.testing.assert_allclose(high, expected_high, rtol=0, atol=1e-3)
    extra = [rows.shape[1] - len(ids) for rows in compact]
    assert np.mean(extra) < 0.2 * (full.num_vertices - len(ids)), "most of the rest skipped"


def test_subset_bounds_hold_every_member(bfm, render_assets):
    subset = SubsetDecoder(bfm, np.unique(render_assets.lod_triangles))
    alpha, _ = _faces(bfm, 5, seed=1)
    offsets = subset.rest_offsets
    group = np.repeat(np.arange(subset.groups), np.diff(offsets))
    for a in alpha:
        members = subset.rest_mean + subset.rest_basis.astype(np.float64) @ a  # (R, 3)
        centre, size = subset.rest_bounds(a)
        assert (np.abs(members - centre[group]) <= size[group]).all()


def test_not_finite_coefficients_decode_every_vertex(bfm, render_assets):
    ids = np.unique(render_assets.lod_triangles)
    decoder = CoarseDecoder(bfm, ids)
    alpha, transforms = _faces(bfm, 1)
    alpha[0, 3] = np.nan
    (rows,) = decoder(alpha, transforms)
    assert rows.shape[1] == bfm.num_vertices  # nothing bounded: all groups decoded


def test_pictures_are_those_of_the_full_decode(render_version, emma):
    """The step on small faces (coarse mesh), with the compact decode and without it: the
    same pictures but for the last bit of a decoded coordinate (BLAS rounds the same face
    differently in a batch of one or of three, and the extra vertices are decoded apart):
    a grey level, at a handful of pixels (the 270 pictures of the benchmark frames, one or
    two faces a frame, were equal to the bit)."""
    from tddfa.render.step import build_render_step

    step = build_render_step(render_version)
    reference = build_render_step(render_version)
    reference._coarse_decoder = None  # every vertex decoded, as the GL path does
    small = {name: emma[name].copy() for name in emma}
    small["TRANSFORM"][:, :, :2] *= 0.5  # x, y rows: faces under render_coarse_below
    try:
        for mode in RENDER_MODES:
            parameters = [{RENDER_MODE_PARAMETER: mode}]
            got = step.run(small, parameters)["RENDERED"]
            want = reference.run(small, parameters)["RENDERED"]
            difference = np.abs(got.astype(np.int16) - want.astype(np.int16))
            assert difference.max() <= 1 and (difference > 0).mean() < 1e-5, mode
    finally:
        step.close()
        reference.close()


@pytest.mark.parametrize("flag", [[True], [False, True]])
def test_compact_faces_are_checked(render_step, flag):
    from tddfa.render.faces import MeshFaces

    renderer = render_step.renderer
    drawn = len(renderer.coarse_vertices)
    faces = len(flag)
    meshes = MeshFaces(
        frame=np.zeros(faces, np.int64),
        slot=np.arange(faces),
        vertices=[np.zeros((3, drawn - 1), np.float32)] * faces,
        transforms=np.tile(np.eye(3, 4, dtype=np.float32), (faces, 1, 1)),
        coarse=np.ones(faces, bool),
        compact=np.array(flag),
    )
    image = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="vertices"):
        renderer.draw(image, ["shaded"], meshes, slots=faces)
