"""The `tddfa` ensemble on a real tritonserver (CPU, python flavour) against the
in-process pipeline and the original implementation's reference numbers."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tddfa.contract import OUTPUT_NAMES as OUTPUTS
from tddfa.detector import Detector

EXPECTED_FACES = {"emma.jpg": 3, "trump_hillary.jpg": 2, "JianzhuGuo.jpg": 1}


def infer(url: str, image: np.ndarray, protocol: str = "http", outputs=OUTPUTS) -> dict:
    module = httpclient if protocol == "http" else grpcclient
    with module.InferenceServerClient(url) as client:
        tensor = module.InferInput("IMAGE", [1, *image.shape], _datatype(image))
        tensor.set_data_from_numpy(image[None])
        requested = [module.InferRequestedOutput(name) for name in outputs]
        result = client.infer("tddfa", [tensor], outputs=requested)
        return {name: result.as_numpy(name)[0] for name in outputs}


def _datatype(array: np.ndarray) -> str:
    return {np.uint8: "UINT8", np.float32: "FP32", np.uint16: "UINT16"}[array.dtype.type]


@pytest.fixture(scope="module")
def served(ensemble_server, test_images):
    """Ensemble outputs per test image (one request each, over HTTP)."""
    return {name: infer(ensemble_server.http_url, image) for name, image in test_images.items()}


@pytest.fixture(scope="module")
def in_process(pipeline, test_images):
    return {name: pipeline(image) for name, image in test_images.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED_FACES))
def test_face_count(served, name):
    assert int(served[name]["FACE_COUNT"][0]) == EXPECTED_FACES[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_FACES))
def test_server_equals_in_process_pipeline(served, in_process, name):
    got, want = served[name], in_process[name]
    for key in ("FACE_COUNT", "FACE_BOXES", "LANDMARKS", "POSE", "PARAMS", "VERTICES"):
        np.testing.assert_allclose(got[key], want[key][0], rtol=1e-5, atol=1e-3, err_msg=key)
    diff = np.abs(got["RENDERED"].astype(int) - want["RENDERED"][0].astype(int))
    assert diff.max() <= 2, f"served and in-process renders differ by up to {diff.max()}"


def test_emma_matches_reference(served, reference_dir):
    reference = json.loads((reference_dir / "emma.json").read_text())
    got = served["emma.jpg"]
    faces = reference["faces"]
    assert int(got["FACE_COUNT"][0]) == len(faces)
    for i, face in enumerate(faces):
        np.testing.assert_allclose(got["FACE_BOXES"][i, :4], face["box"], atol=1.0)
        assert got["FACE_BOXES"][i, 4] == pytest.approx(face["score"], abs=1e-3)
        params = np.asarray(face["params"], np.float32)
        np.testing.assert_allclose(
            got["PARAMS"][i], params, rtol=1e-3, atol=1e-3 * np.abs(params).max()
        )
        np.testing.assert_allclose(
            got["LANDMARKS"][i, :2], np.asarray(face["landmarks"])[:2], atol=0.5
        )
        pose = face["pose_deg"]
        np.testing.assert_allclose(
            got["POSE"][i], [pose["yaw"], pose["pitch"], pose["roll"]], atol=0.1
        )


@pytest.mark.parametrize("name", sorted(EXPECTED_FACES))
def test_render_changes_faces_only(served, test_images, name):
    got, image = served[name], test_images[name]
    changed = np.any(got["RENDERED"] != image, axis=-1)
    count = int(got["FACE_COUNT"][0])
    inside = np.zeros_like(changed)
    height, width = changed.shape
    for x1, y1, x2, y2, _ in got["FACE_BOXES"][:count]:
        # every face's box is mostly drawn over
        box = changed[int(y1) : int(y2), int(x1) : int(x2)]
        assert box.mean() > 0.3, f"face box {x1:.0f},{y1:.0f} barely drawn ({box.mean():.2f})"
        # nothing is drawn far outside the face: allow the mesh (forehead, ears) a margin
        mx, my = 0.5 * (x2 - x1), 0.5 * (y2 - y1)
        inside[
            max(0, int(y1 - my)) : min(height, int(y2 + my)),
            max(0, int(x1 - mx)) : min(width, int(x2 + mx)),
        ] = True
    assert not changed[~inside].any(), "pixels changed far from every face"


def test_blank_frame_has_no_faces_and_is_returned_unchanged(ensemble_server):
    blank = np.full((360, 640, 3), 127, np.uint8)
    got = infer(ensemble_server.grpc_url, blank, protocol="grpc")
    assert int(got["FACE_COUNT"][0]) == 0
    np.testing.assert_array_equal(got["RENDERED"], blank)
    assert not got["FACE_BOXES"].any() and not got["LANDMARKS"].any()


def test_grpc_and_http_agree(ensemble_server, test_images):
    image = test_images["trump_hillary.jpg"]
    outputs = ("FACE_COUNT", "FACE_BOXES", "POSE")
    http = infer(ensemble_server.http_url, image, "http", outputs)
    grpc = infer(ensemble_server.grpc_url, image, "grpc", outputs)
    for key in outputs:
        np.testing.assert_array_equal(http[key], grpc[key])


def test_more_faces_than_k_keeps_the_k_best(ensemble_server, test_images, pipeline):
    face = test_images["JianzhuGuo.jpg"]
    tile = face[:: max(1, face.shape[0] // 240), :: max(1, face.shape[0] // 240)]
    mosaic = np.concatenate([np.concatenate([tile] * 4, axis=1)] * 3, axis=0)  # 12 faces
    got = infer(
        ensemble_server.http_url, np.ascontiguousarray(mosaic), outputs=("FACE_COUNT", "FACE_BOXES")
    )
    k = pipeline.config.max_faces
    assert int(got["FACE_COUNT"][0]) == k

    # all detections, from the same network with room for every face
    roomy = Detector(type(pipeline.config)(max_faces=64), pipeline.detector.detector.runner)
    boxes, counts = roomy(np.ascontiguousarray(mosaic)[None])
    assert counts[0] > k, f"the mosaic must hold more than K={k} faces, found {counts[0]}"
    np.testing.assert_allclose(got["FACE_BOXES"][:, 4], boxes[0, :k, 4], atol=1e-4)


def _executions(url: str) -> dict[str, int]:
    """Successful executions per model so far (Triton's statistics)."""
    with httpclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics()["model_stats"]
    return {m["name"]: int(m["inference_stats"]["success"]["count"]) for m in stats}


@pytest.mark.parametrize(
    ("outputs", "skipped"),
    [
        (("FACE_COUNT",), {"face_aligner", "face_renderer", "face_vertices"}),
        (("LANDMARKS", "POSE"), {"face_renderer", "face_vertices"}),
        (("RENDERED",), {"face_vertices"}),
        (("VERTICES",), {"face_renderer"}),
    ],
    ids=["count", "landmarks", "rendered", "vertices"],
)
def test_only_what_is_asked_is_computed(ensemble_server, test_images, outputs, skipped):
    before = _executions(ensemble_server.http_url)
    got = infer(ensemble_server.http_url, test_images["JianzhuGuo.jpg"], outputs=outputs)
    assert set(got) == set(outputs) and int(got.get("FACE_COUNT", [1])[0]) == 1
    deadline = time.monotonic() + 10  # statistics land just after the response
    while True:
        after = _executions(ensemble_server.http_url)
        ran = {name for name in after if after[name] > before.get(name, 0)}
        if after["tddfa"] > before["tddfa"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ran & skipped == set(), f"{sorted(ran & skipped)} ran for a {outputs} request"
    assert "face_detector" in ran


def _bad_inputs():
    return {
        "wrong dtype": (np.zeros((1, 64, 64, 3), np.float32), "FP32"),
        "wrong rank": (np.zeros((1, 64, 64), np.uint8), "IMAGE"),
        "zero-sized": (np.zeros((1, 0, 0, 3), np.uint8), "IMAGE"),
        "1x1": (np.zeros((1, 1, 1, 3), np.uint8), "1x1"),
        "4 channels": (np.zeros((1, 64, 64, 4), np.uint8), "IMAGE"),
        "too large": (np.zeros((1, 4100, 16, 3), np.uint8), "4096"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_input_gets_a_clear_error_and_server_keeps_serving(ensemble_server, case, protocol):
    array, expected = _bad_inputs()[case]
    module = httpclient if protocol == "http" else grpcclient
    url = ensemble_server.http_url if protocol == "http" else ensemble_server.grpc_url
    with module.InferenceServerClient(url) as client:
        tensor = module.InferInput("IMAGE", list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(array)
        with pytest.raises(InferenceServerException) as error:
            client.infer("tddfa", [tensor])
        assert expected in str(error.value), str(error.value)
        assert client.is_server_live() and client.is_model_ready("tddfa")
    got = infer(url, np.full((120, 160, 3), 90, np.uint8), protocol, ("FACE_COUNT",))
    assert int(got["FACE_COUNT"][0]) == 0
