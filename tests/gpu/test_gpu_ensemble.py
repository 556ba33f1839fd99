"""The GPU build of the ensemble (`tddfa build --device gpu`) on a real tritonserver against
the CPU ensemble's outputs and the original implementation's reference.

Tolerances: fp16 networks (the default GPU build): landmarks within 2 px and pose within
1 degree of the reference and of the CPU path; fp32 networks: the CPU path's own tolerances
(landmarks 0.5 px, pose 0.1 degree).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from gpu_client import blank, infer, infer_cuda_shm, infer_sequence, mosaic

PHOTOS = ("emma.jpg", "trump_hillary.jpg", "JianzhuGuo.jpg")
TOLERANCE = {"fp16": (2.0, 1.0), "fp32": (0.5, 0.1)}  # (landmark px, pose degrees)


def _server(request, precision: str) -> str:
    return request.getfixturevalue("gpu_server" if precision == "fp16" else "gpu_server_fp32")


def _pose_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Angle differences in degrees, wrapped into [-180, 180)."""
    return (got - want + 180.0) % 360.0 - 180.0


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
@pytest.mark.parametrize("name", PHOTOS)
def test_matches_cpu_ensemble(request, precision, name, test_images, cpu_expected):
    got = infer(_server(request, precision), test_images[name])
    count = int(cpu_expected[f"{name}:FACE_COUNT"][0])
    landmark_px, pose_deg = TOLERANCE[precision]
    assert int(got["FACE_COUNT"][0]) == count
    np.testing.assert_allclose(
        got["FACE_BOXES"][:count, :4], cpu_expected[f"{name}:FACE_BOXES"][:count, :4], atol=2.0
    )
    lm_error = np.abs(got["LANDMARKS"][:count, :2] - cpu_expected[f"{name}:LANDMARKS"][:count, :2])
    assert lm_error.max() <= landmark_px, f"landmarks differ by up to {lm_error.max():.3f} px"
    pose_error = np.abs(_pose_error(got["POSE"][:count], cpu_expected[f"{name}:POSE"][:count]))
    assert pose_error.max() <= pose_deg, f"pose differs by up to {pose_error.max():.3f} deg"
    # empty slots stay zero on the GPU path too
    assert not got["LANDMARKS"][count:].any() and not got["VERTICES"][count:].any()


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_emma_matches_reference(request, precision, test_images, reference_dir):
    reference = json.loads((reference_dir / "emma.json").read_text())["faces"]
    got = infer(_server(request, precision), test_images["emma.jpg"])
    landmark_px, pose_deg = TOLERANCE[precision]
    assert int(got["FACE_COUNT"][0]) == len(reference)
    for i, face in enumerate(reference):
        lm_error = np.abs(got["LANDMARKS"][i, :2] - np.asarray(face["landmarks"])[:2])
        assert lm_error.max() <= landmark_px, f"face {i}: landmarks off by {lm_error.max():.3f} px"
        want = [face["pose_deg"][k] for k in ("yaw", "pitch", "roll")]
        pose_error = np.abs(_pose_error(got["POSE"][i], np.asarray(want)))
        assert pose_error.max() <= pose_deg, f"face {i}: pose off by {pose_error.max():.3f} deg"


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_dense_vertices_match_cpu(request, precision, test_images, cpu_expected):
    name = "JianzhuGuo.jpg"
    want = cpu_expected[f"{name}:VERTICES"]
    got = infer(_server(request, precision), test_images[name], ("VERTICES",))["VERTICES"]
    error = np.abs(got[: len(want), :2] - want[:, :2])
    limit = TOLERANCE[precision][0]
    assert error.max() <= limit, f"vertices differ by up to {error.max():.3f} px"


def test_zero_faces_returns_the_frame(gpu_server):
    frame = blank()
    got = infer(gpu_server, frame)
    assert int(got["FACE_COUNT"][0]) == 0
    np.testing.assert_array_equal(got["RENDERED"], frame)
    assert not got["FACE_BOXES"].any() and not got["VERTICES"].any()


def test_more_faces_than_k_keeps_the_k_best(gpu_server, test_images, cpu_expected):
    """12 identical tiles: K = 8 of them, with the CPU path's scores and box sizes (which
    of the tied tiles survive may differ with the arithmetic, so positions are not
    compared)."""
    got = infer(gpu_server, mosaic(test_images["JianzhuGuo.jpg"]), ("FACE_COUNT", "FACE_BOXES"))
    want = cpu_expected["mosaic:FACE_BOXES"]
    k = got["FACE_BOXES"].shape[0]
    assert int(got["FACE_COUNT"][0]) == int(cpu_expected["mosaic:FACE_COUNT"][0]) == k
    np.testing.assert_allclose(np.sort(got["FACE_BOXES"][:, 4]), np.sort(want[:, 4]), atol=2e-3)
    # near-tied candidates of a face: float noise may pick a neighbour a few px larger
    sizes = got["FACE_BOXES"][:, 2:4] - got["FACE_BOXES"][:, :2]
    want_size = np.median(want[:, 2:4] - want[:, :2], axis=0)
    np.testing.assert_allclose(sizes, np.broadcast_to(want_size, sizes.shape), rtol=0.1)


@pytest.mark.parametrize("name", ["JianzhuGuo.jpg", "trump_hillary.jpg"])
def test_rendered_frame_close_to_cpu_render(gpu_server, name, test_images, cpu_expected):
    """The whole GPU path (fp16 networks, NVIDIA GL) vs the CPU path (onnxruntime, llvmpipe)."""
    got = infer(gpu_server, test_images[name], ("RENDERED",))["RENDERED"]
    diff = np.abs(got.astype(int) - cpu_expected[f"{name}:RENDERED"].astype(int)).max(axis=-1)
    assert diff.mean() < 1.0, f"mean pixel difference {diff.mean():.3f}"
    assert (diff > 32).mean() < 0.01, f"{(diff > 32).mean():.2%} of pixels differ by > 32 levels"


def test_cuda_shared_memory_in_and_out(gpu_server, test_images):
    import cupy

    image = test_images["trump_hillary.jpg"]
    plain = infer(gpu_server, image, ("RENDERED", "FACE_COUNT"))
    shm = infer_cuda_shm(gpu_server, cupy.asarray(image))
    assert int(shm["FACE_COUNT"][0]) == int(plain["FACE_COUNT"][0]) == 2
    diff = np.abs(cupy.asnumpy(shm["RENDERED"]).astype(int) - plain["RENDERED"].astype(int))
    assert diff.max() <= 1, f"CUDA shared memory and plain requests differ by {diff.max()}"


def test_sequence_tracks_on_the_gpu(gpu_server, test_images):
    """tddfa_track on the GPU build: the first frame is detected, the others are tracked,
    and on still frames the tracked landmarks equal the stateless ones (no drift)."""
    image = test_images["trump_hillary.jpg"]
    stateless = infer(gpu_server, image, ("FACE_COUNT", "LANDMARKS"))
    outputs = ("FACE_COUNT", "LANDMARKS", "TRACK_IDS", "DETECTED")
    results = infer_sequence(gpu_server, image, outputs, frames=6, sequence_id=4242)
    assert [bool(r["DETECTED"][0]) for r in results] == [True] + [False] * 5
    for r in results:
        assert int(r["FACE_COUNT"][0]) == 2 and sorted(r["TRACK_IDS"][:2]) == [1, 2]
        order = np.argsort(r["TRACK_IDS"][:2])
        error = np.abs(r["LANDMARKS"][:2][order] - stateless["LANDMARKS"][:2])
        assert error.max() < 0.05, f"tracked landmarks drift by {error.max():.3f} px"
