"""Parameters -> pose, transform, landmarks (docs/models.md 4), against the reference."""

from __future__ import annotations

import json
import math
import pickle
import types

import numpy as np
import pytest

from tddfa.params import (
    apply_transform,
    denormalize,
    landmark_vertices,
    landmarks,
    model_to_image,
    pose_degrees,
)


@pytest.fixture(scope="module")
def landmark_bfm(asset_dir):
    """The exact 68-landmark rows of the BFM, built from the 3DDFA v1 files."""
    v1 = asset_dir / "3ddfa_v1"
    keypoints = np.load(v1 / "keypoints_sim.npy")
    mean = (np.load(v1 / "u_shp.npy") + np.load(v1 / "u_exp.npy")).reshape(-1)
    return types.SimpleNamespace(
        u_lm=mean[keypoints].astype(np.float32),
        w_shp_lm=np.loadtxt(v1 / "w_shp_base.txt", dtype=np.float32),
        w_exp_lm=np.loadtxt(v1 / "w_exp_base.txt", dtype=np.float32),
    )


@pytest.fixture(scope="module")
def faces(reference_dir):
    return json.loads((reference_dir / "emma.json").read_text())["faces"]


def _similar_transform(points, roi, size=120):
    """docs/models.md 4's crop -> image mapping, step by step (float64)."""
    points = points.astype(np.float64).copy()
    sx, sy, ex, ey = (float(v) for v in roi)
    points[0] -= 1
    points[2] -= 1
    points[1] = size - points[1]
    points[0] = points[0] * (ex - sx) / size + sx
    points[1] = points[1] * (ey - sy) / size + sy
    points[2] *= ((ex - sx) + (ey - sy)) / (2 * size)
    points[2] -= points[2].min()
    return points


def test_denormalize_matches_reference(asset_dir, reference_dir, faces):
    with open(asset_dir / "3ddfa_v2" / "param_mean_std_62d_120x120.pkl", "rb") as f:
        stats = pickle.load(f, encoding="latin1")
    ref = np.load(reference_dir / "emma_face0_regressor.npz")
    params = denormalize(ref["output_normalised"], stats["mean"], stats["std"])
    assert params.shape == (1, 62) and params.dtype == np.float32
    np.testing.assert_allclose(params[0], faces[0]["params"], rtol=1e-5, atol=1e-5)


def test_landmarks_match_reference(landmark_bfm, faces):
    params = np.array([face["params"] for face in faces], np.float32)
    rois = np.array([face["roi_box"] for face in faces], np.float32)
    expected = np.array([face["landmarks"] for face in faces], np.float32)
    got = landmarks(params, rois, landmark_bfm)
    assert got.shape == (3, 3, 68) and got.dtype == np.float32
    xy_error = np.abs(got[:, :2] - expected[:, :2]).max()
    z_error = np.abs(got[:, 2] - expected[:, 2]).max()
    assert xy_error < 0.5, f"landmarks x/y off by {xy_error} px"
    assert z_error < 0.5, f"landmarks z off by {z_error}"
    np.testing.assert_array_equal(got[:, 2].min(axis=1), 0)


def test_pose_matches_reference(faces):
    params = np.array([face["params"] for face in faces], np.float32)
    expected = np.array([[face["pose_deg"][k] for k in ("yaw", "pitch", "roll")] for face in faces])
    got = pose_degrees(params)
    assert got.shape == (3, 3) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 0.1


def test_transform_equals_the_step_by_step_mapping(landmark_bfm, faces):
    rng = np.random.default_rng(0)
    params = np.array([face["params"] for face in faces], np.float32)
    rois = np.array([face["roi_box"] for face in faces], np.float32)
    vertices = rng.normal(0, 5e4, (3, 3, 500)).astype(np.float32)
    got = apply_transform(model_to_image(params, rois), vertices)
    for k in range(3):
        camera = params[k, :12].reshape(3, 4).astype(np.float64)
        crop_points = camera[:, :3] @ vertices[k] + camera[:, 3:]
        np.testing.assert_allclose(got[k], _similar_transform(crop_points, rois[k]), atol=0.02)


def _params_from_rotation(rotation, scale=1e-3):
    params = np.zeros((1, 62), np.float32)
    params[0, :12] = np.concatenate([scale * rotation, [[60], [60], [0]]], axis=1).reshape(-1)
    return params


def _rotation(yaw, pitch, roll):
    """R = Rz(roll) Ry(yaw) Rx(pitch)-style matrix whose angles matrix2angle recovers."""
    cy, sy, cp, sp, cr, sr = (
        f(math.radians(a)) for a in (yaw, pitch, roll) for f in (math.cos, math.sin)
    )
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.mark.parametrize("angles", [(30, 10, -5), (-60, -20, 15), (0, 0, 0), (85, 5, 5)])
def test_pose_recovers_known_angles(angles):
    rotation = _rotation(*angles)
    assert rotation[2, 0] == pytest.approx(math.sin(math.radians(angles[0])))
    np.testing.assert_allclose(pose_degrees(_params_from_rotation(rotation))[0], angles, atol=1e-3)


@pytest.mark.parametrize("sign", [1, -1])
def test_pose_gimbal_lock(sign):
    rotation = _rotation(sign * 89.9, 20, 10)  # |R[2, 0]| > 0.998
    yaw, pitch, roll = pose_degrees(_params_from_rotation(rotation))[0]
    assert yaw == pytest.approx(sign * 90)
    assert roll == 0
    if sign > 0:
        expected = math.degrees(math.atan2(-rotation[0, 1], -rotation[0, 2]))
    else:
        expected = math.degrees(math.atan2(rotation[0, 1], rotation[0, 2]))
    assert pitch == pytest.approx(expected, abs=1e-3)


def test_empty_slots_are_finite(landmark_bfm):
    params = np.zeros((2, 62), np.float32)
    rois = np.zeros((2, 4), np.float32)
    assert np.array_equal(pose_degrees(params), np.zeros((2, 3), np.float32))
    assert np.isfinite(landmarks(params, rois, landmark_bfm)).all()
    assert landmark_vertices(params, landmark_bfm).shape == (2, 3, 68)
