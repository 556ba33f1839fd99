"""`tddfa video --mesh`'s animated glTF on a synthetic BFM and synthetic tracks: the pose
recovered from PARAMS + LANDMARKS, its split into glTF nodes, and the file evaluated as a
viewer does (tests/gltf_scene.py) against the server's own maths for VERTICES."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gltf_scene import GltfScene
from gltf_validator import errors, validate
from scipy.spatial.transform import Rotation

from tddfa import params as face_params
from tddfa.bfm import BFM, DenseDecoder
from tddfa.config import NUM_EXP, NUM_LANDMARKS, NUM_PARAMS, NUM_SHAPE, NUM_VERTICES
from tddfa_clients.mesh_animation import (
    IDENTITY_TOLERANCE_PX,
    FaceAnimation,
    check_animation_name,
)
from tddfa_clients.mesh_model import FaceModel, FaceModelMismatch
from tddfa_clients.mesh_pose import crop_boxes, image_transforms, quaternions, split_linear
from tddfa_clients.triton_client import FrameResult

WIDTH, HEIGHT, FPS = 640, 360, 25.0


@pytest.fixture(scope="module")
def model() -> FaceModel:
    """A BFM of the real sizes with a dome for a mean and random directions."""
    rng = np.random.default_rng(1)
    rows, cols = 5, NUM_VERTICES // 5
    y, x = np.meshgrid(np.linspace(-9e4, 9e4, rows), np.linspace(-8e4, 8e4, cols), indexing="ij")
    z = 1.3e5 - (x**2 + y**2) / 2e5
    u = np.stack([x, y, z], -1).reshape(-1).astype(np.float32)
    i, j = np.meshgrid(np.arange(rows - 1), np.arange(cols - 1), indexing="ij")
    a = (i * cols + j).ravel()
    tri = np.concatenate(
        [np.stack([a, a + 1, a + cols + 1]), np.stack([a, a + cols + 1, a + cols])], 1
    )
    w_shp = (rng.standard_normal((3 * NUM_VERTICES, NUM_SHAPE)) * 0.02).astype(np.float32)
    w_exp = (rng.standard_normal((3 * NUM_VERTICES, NUM_EXP)) * 600).astype(np.float32)
    ids = np.sort(rng.choice(NUM_VERTICES, NUM_LANDMARKS, replace=False))
    lm_rows = (3 * ids[:, None] + np.arange(3)).reshape(-1)
    bfm = BFM(
        u=u, w_shp=w_shp, w_exp=w_exp, tri=tri.astype(np.int32), u_lm=u[lm_rows],
        w_shp_lm=w_shp[lm_rows], w_exp_lm=w_exp[lm_rows], landmark_vertex_ids=ids,
        param_mean=np.zeros(NUM_PARAMS, np.float32), param_std=np.ones(NUM_PARAMS, np.float32),
        exact=False,
    )  # fmt: skip
    uv = np.stack([(x.ravel() + 8e4) / 1.6e5, (y.ravel() + 9e4) / 1.8e5], 1).astype(np.float32)
    return FaceModel(bfm=bfm, uv=uv, source=Path("synthetic.npz"))


def _face(t: float, centre: float, identity: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """(params (62,), roi (4,)) of a face turning and talking over time ``t``."""
    rotation = Rotation.from_euler("yxz", [0.6 * np.sin(t), 0.2 * t, 0.1]).as_matrix()
    anisotropy = np.eye(3) + 0.03 * rng.standard_normal((3, 3))
    camera = np.concatenate([5e-4 * rotation @ anisotropy, [[60.0], [62.0], [-70.0]]], 1)
    expression = 0.5 * np.sin(t + np.arange(NUM_EXP))
    params = np.concatenate([camera.ravel(), identity, expression]).astype(np.float32)
    side = 180.0 + 20 * np.sin(t)
    x0, y0 = centre - side / 2 + 15 * t, 70.0 + 5 * t
    return params, np.array([x0, y0, x0 + side, y0 + side], np.float32)


def _served(params: np.ndarray, rois: np.ndarray, bfm: BFM) -> dict[str, np.ndarray]:
    """LANDMARKS and VERTICES exactly as the server computes them."""
    transform = face_params.model_to_image(params, rois)
    _, alpha_shp, alpha_exp = face_params.split_params(params)
    vertices = face_params.apply_transform(transform, DenseDecoder(bfm)(alpha_shp, alpha_exp))
    return {"LANDMARKS": face_params.landmarks(params, rois, bfm), "VERTICES": vertices}


def _video(model: FaceModel, frames: int = 12, identity_noise: float = 0.0, space="upright"):
    """Two tracks: 1 on every frame, 2 leaving after frame 3 and back from frame 8."""
    rng = np.random.default_rng(2)
    identities = {1: rng.standard_normal(NUM_SHAPE) * 2e4, 2: rng.standard_normal(NUM_SHAPE) * 2e4}
    animation = FaceAnimation(model, WIDTH, HEIGHT, space)
    truth: dict[tuple[int, int], np.ndarray] = {}
    for f in range(frames):
        ids = [1] + ([2] if f < 4 or f >= 8 else [])
        rows = []
        for track in ids:
            identity = identities[track] + identity_noise * rng.standard_normal(NUM_SHAPE)
            rows.append(_face(f / FPS * 5, 150.0 + 300 * (track - 1), identity, rng))
        params = np.stack([r[0] for r in rows])
        served = _served(params, np.stack([r[1] for r in rows]), model.bfm)
        outputs = {
            "FACE_COUNT": np.array([len(ids)], np.int32),
            "PARAMS": params,
            "LANDMARKS": served["LANDMARKS"],
            "TRACK_IDS": np.array(ids, np.int32),
        }
        animation.add(10.0 + f / FPS, FrameResult.from_outputs(outputs))
        for k, track in enumerate(ids):
            truth[(f, track)] = served["VERTICES"][k]
    return animation, truth


def test_crop_boxes_are_recovered_from_params_and_landmarks(model):
    rng = np.random.default_rng(0)
    rows = [_face(t, 200.0, rng.standard_normal(NUM_SHAPE) * 2e4, rng) for t in (0.0, 0.7, 2.0)]
    params, rois = np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
    landmarks = face_params.landmarks(params, rois, model.bfm)
    np.testing.assert_allclose(crop_boxes(params, landmarks, model.bfm), rois, atol=2e-3)
    np.testing.assert_allclose(
        image_transforms(params, landmarks, model.bfm),
        face_params.model_to_image(params, rois),
        rtol=1e-5,
        atol=1e-4,
    )


def test_linear_parts_split_into_rotations_and_a_scale():
    rng = np.random.default_rng(3)
    turning = Rotation.from_rotvec(np.linspace([0, 0, 0], [0.4, 1.2, -0.3], 60)).as_matrix()
    linear = 2.0 * turning @ (np.eye(3) + 0.03 * rng.standard_normal((60, 3, 3)))
    linear[20:23, :, 0] *= -1  # mirroring frames get one negative scale
    outer, scale, inner = split_linear(linear)
    rebuilt = Rotation.from_quat(outer).as_matrix() @ (
        scale[:, :, None] * Rotation.from_quat(inner).as_matrix()
    )
    np.testing.assert_allclose(rebuilt, linear, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(outer, axis=1), 1, atol=1e-12)
    mirrored = np.isin(np.arange(60), [20, 21, 22])
    np.testing.assert_array_equal((scale < 0).sum(axis=1), mirrored.astype(int))
    assert (np.sum(outer[1:] * outer[:-1], axis=1) > 0).all(), "one hemisphere"
    assert (np.sum(inner[1:] * inner[:-1], axis=1) > 0).all()


def test_quaternions_match_scipy_including_half_turns():
    turns = Rotation.from_rotvec([[np.pi, 0, 0], [0, np.pi, 0], [0, 0, np.pi], [0, 0, 0]])
    rotations = Rotation.concatenate([turns, Rotation.random(500, random_state=4)])
    ours = quaternions(rotations.as_matrix())
    same_rotation = np.abs(np.sum(ours * rotations.as_quat(), axis=1))  # q and -q are one
    np.testing.assert_allclose(same_rotation, 1.0, atol=1e-12)


@pytest.mark.parametrize(
    ("identity_noise", "space"), [(0.0, "upright"), (300.0, "upright"), (0.0, "image")]
)
def test_posed_meshes_equal_the_served_vertices(model, tmp_path, identity_noise, space):
    animation, truth = _video(model, identity_noise=identity_noise, space=space)
    summary = animation.write(tmp_path / "anim.glb")
    assert [t.track_id for t in summary.tracks] == [1, 2] and summary.frames == 12
    report = validate(summary.path)
    assert not errors(report), report["issues"]["messages"]
    scene = GltfScene(summary.path)
    to_image = np.asarray(scene.gltf.asset.extras["tddfa"]["to_image"])
    assert (space == "image") == np.array_equal(to_image, np.eye(4))
    for (frame, track), expected in truth.items():
        node = scene.node(f"face_{track}_mesh")
        posed = scene.posed_vertices(node, np.float32(frame / FPS))
        pixels = posed @ to_image[:3, :3].T + to_image[:3, 3]
        error = np.abs(pixels.T - expected).max()
        assert error < IDENTITY_TOLERANCE_PX + 0.01, (frame, track, error)
    targets = {t.track_id: t.identity_targets for t in summary.tracks}
    if identity_noise == 0:
        assert targets == {1: 0, 2: 0}, "a fixed identity is folded into the base mesh"
    else:
        assert all(0 < k <= NUM_SHAPE for k in targets.values())
        mesh = scene.gltf.meshes[scene.gltf.nodes[scene.node("face_1_mesh")].mesh]
        assert len(mesh.primitives[0].targets) == NUM_EXP + targets[1]
        assert mesh.extras["targetNames"][NUM_EXP] == "identity_1"


def test_keyframes_once_per_frame_and_hidden_while_absent(model, tmp_path):
    animation, _ = _video(model)
    scene = GltfScene(animation.write(tmp_path / "anim.glb").path)
    times = np.arange(12, dtype=np.float32) / np.float32(FPS)
    for track, frames in ((1, range(12)), (2, [0, 1, 2, 3, 8, 9, 10, 11])):
        pose, mesh = scene.node(f"face_{track}"), scene.node(f"face_{track}_mesh")
        for node, path in ((pose, "translation"), (pose, "rotation"), (mesh, "weights")):
            np.testing.assert_allclose(scene.keyframes(node, path), times[list(frames)], atol=1e-6)
        shown = [np.linalg.det(scene.world(mesh, t)[:3, :3]) != 0 for t in times]
        assert shown == [f in frames for f in range(12)], track
    weights = scene.accessor(_sampler_output(scene, scene.node("face_1_mesh"), "weights"))
    assert np.ptp(weights.reshape(12, -1)[:, :NUM_EXP], axis=0).min() > 0.01, "weights animate"


def _sampler_output(scene: GltfScene, node: int, path: str) -> int:
    (animation,) = scene.gltf.animations
    channel = next(c for c in animation.channels if c.target.node == node and c.target.path == path)
    return animation.samplers[channel.sampler].output


def test_refusals_name_the_fix(model, tmp_path):
    with pytest.raises(ValueError, match="name it .glb"):
        check_animation_name(tmp_path / "anim.obj")
    with pytest.raises(ValueError, match="--mode track"):
        check_animation_name(tmp_path / "anim.glb", "detect")
    with pytest.raises(FaceModelMismatch, match="--bfm"):
        model.check_served("exact")
    model.check_served("approximate")
    model.check_served("unknown")
    animation = FaceAnimation(model, WIDTH, HEIGHT)
    untracked = FrameResult.from_outputs({"FACE_COUNT": np.array([0], np.int32)})
    with pytest.raises(ValueError, match="--mode track"):
        animation.add(0.0, untracked)
    with pytest.raises(ValueError, match="no frame"):
        animation.write(tmp_path / "empty.glb")
