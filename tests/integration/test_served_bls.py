"""The networks as models of their own, called through BLS, on a real tritonserver.

1. `tddfa build --networks models` serves face_regressor as a Python model and has
   face_aligner and face_tracker call it (and face_tracker the face_detector model) through
   BLS: both ensembles must give what the in-process build gives, and the served network
   models must have done the work (their request counters move).
2. The onnxruntime flavour's repository itself, with its two native models (the one-graph
   detector, the regressor) stood in for by Python models that run the same model.onnx files
   with onnxruntime, since the embedded server has no onnxruntime backend: every BLS call of
   the native flavours, against the graph, on the CPU.
Few frames: CI has two shared cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tddfa.contract import SEQUENCE_ENSEMBLE, STATELESS_ENSEMBLE
from tddfa.runners import OnnxRuntimeRunner
from tddfa_tools.build.model_config import load_config, save_config
from tddfa_tools.build.options import BuildOptions
from tddfa_tools.build.repository import TEMPLATE, build_repository
from tddfa_tools.dev.motion_clip import make_clip

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ("FACE_COUNT", "FACE_BOXES", "LANDMARKS", "POSE", "PARAMS")
PHOTOS = ("emma.jpg", "JianzhuGuo.jpg")  # three faces and one


@pytest.fixture(scope="module")
def model_repository(asset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU build with the networks as models (served by `triton_server`)."""
    out = tmp_path_factory.mktemp("bls") / "model_repository"
    return build_repository(
        BuildOptions(
            out=out,
            models_dir=REPO_ROOT / "build" / "models",
            asset_dir=asset_dir,
            networks="models",
        )
    )


@pytest.fixture(scope="module")
def client(triton_server):
    with httpclient.InferenceServerClient(triton_server.http_url) as client:
        yield client


def requests_of(client, model: str) -> int:
    stats = client.get_inference_statistics(model_name=model)["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def infer(client, model: str, frame: np.ndarray, outputs, **sequence) -> dict:
    tensor = httpclient.InferInput("IMAGE", [1, *frame.shape], "UINT8")
    tensor.set_data_from_numpy(frame[None])
    requested = [httpclient.InferRequestedOutput(name) for name in outputs]
    result = client.infer(model, [tensor], outputs=requested, **sequence)
    return {name: result.as_numpy(name)[0] for name in outputs}


def tracked_pairs(client, pipeline, frames, outputs, sequence: int):
    """Per frame of a ``tddfa_track`` sequence: (served outputs, the in-process tracker's)."""
    for i, frame in enumerate(frames):
        got = infer(
            client,
            SEQUENCE_ENSEMBLE,
            frame,
            outputs,
            sequence_id=sequence,
            sequence_start=i == 0,
            sequence_end=i == len(frames) - 1,
        )
        yield got, {n: a[0] for n, a in pipeline.track(frame, sequence, i == 0).items()}


def test_the_build_calls_served_models(model_repository):
    from tddfa_tools.build.model_config import check_bls, load_repository

    configs = load_repository(model_repository)
    assert configs["face_regressor"].backend == "python"
    assert (
        configs["face_aligner"].parameters["face_regressor_model"].string_value == "face_regressor"
    )
    assert configs["face_tracker"].parameters["face_detector_model"].string_value == "face_detector"
    assert not (model_repository / "face_aligner" / "1" / "face_regressor").exists()
    assert check_bls(configs) == []


def test_frames_equal_the_in_process_build(client, landmark_pipeline, test_images):
    before = requests_of(client, "face_regressor")
    for name in PHOTOS:
        got = infer(client, STATELESS_ENSEMBLE, test_images[name], OUTPUTS)
        want = landmark_pipeline(test_images[name])
        for key in OUTPUTS:
            np.testing.assert_allclose(
                got[key], want[key][0], rtol=1e-5, atol=1e-3, err_msg=f"{name} {key}"
            )
    # face_aligner sent every frame's crops to the face_regressor model
    assert requests_of(client, "face_regressor") - before == len(PHOTOS)


def test_a_sequence_equals_the_in_process_build(client, landmark_pipeline, test_images):
    frames = make_clip(test_images["JianzhuGuo.jpg"], frames=5, still=1, amplitude=8.0).frames
    outputs = (*OUTPUTS, "TRACK_IDS", "DETECTED")
    sequence = 8101
    detector_before = requests_of(client, "face_detector")
    regressor_before = requests_of(client, "face_regressor")
    for i, (got, want) in enumerate(
        tracked_pairs(client, landmark_pipeline, frames, outputs, sequence)
    ):
        assert bool(got["DETECTED"][0]) == (i == 0) == bool(want["DETECTED"][0])
        np.testing.assert_array_equal(got["TRACK_IDS"], want["TRACK_IDS"])
        for key in ("FACE_COUNT", "LANDMARKS", "POSE", "PARAMS"):
            np.testing.assert_allclose(
                got[key], want[key], rtol=1e-5, atol=1e-3, err_msg=f"frame {i} {key}"
            )
        np.testing.assert_allclose(got["FACE_BOXES"][:, :4], want["FACE_BOXES"][:, :4], atol=1e-3)
        # a tracked face's score comes from the served detector on the crop padded into its
        # canvas (BlsDetector.face_scores), in-process from FaceBoxes on the crop alone
        np.testing.assert_allclose(got["FACE_BOXES"][:, 4], want["FACE_BOXES"][:, 4], atol=5e-3)
    # frame 0 detected through face_detector and its new face checked by it (a new track
    # must pass the face check), frames 1.. had their crop checked by it
    assert requests_of(client, "face_detector") - detector_before == len(frames) + 1
    assert requests_of(client, "face_regressor") - regressor_before == len(frames)


# ---- 2. the onnxruntime flavour's layout, native models stood in for -------------------


@pytest.fixture(scope="module")
def onnxruntime_layout(asset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = build_repository(
        BuildOptions(
            flavour="onnxruntime",
            out=tmp_path_factory.mktemp("ort") / "model_repository",
            models_dir=REPO_ROOT / "build" / "models",
            asset_dir=asset_dir,
        )
    )
    adapter = (TEMPLATE / "face_regressor" / "1" / "model.py").read_text()  # NetworkModel
    for name in ("face_detector", "face_regressor"):
        config = load_config(repo / name / "config.pbtxt")
        assert (
            config.platform == "onnxruntime_onnx" and not (repo / name / "1" / "model.py").exists()
        )
        config.ClearField("platform")
        config.backend = "python"
        save_config(config, repo / name / "config.pbtxt")
        (repo / name / "1" / "model.py").write_text(adapter)
    return repo


@pytest.fixture(scope="module")
def ort_client(triton_servers, onnxruntime_layout):
    server = triton_servers.get(onnxruntime_layout)
    with httpclient.InferenceServerClient(server.http_url) as client:
        yield client


def test_native_layout_frames(ort_client, onnxruntime_layout, landmark_pipeline, test_images):
    """The served detector graph's boxes, aligned in-process, are what the ensemble gives:
    the BLS plumbing adds nothing (the graph itself differs from the Python Detector by up
    to 0.19 px: docs/detector.md)."""
    graph = OnnxRuntimeRunner(onnxruntime_layout / "face_detector" / "1" / "model.onnx")
    for name in ("emma.jpg", "trump_hillary.jpg"):
        image = test_images[name][None]
        got = infer(ort_client, STATELESS_ENSEMBLE, image[0], OUTPUTS)
        detected = graph.run({"IMAGE": image})
        want = landmark_pipeline.aligner.run(
            {
                "IMAGE": image,
                "DETECTIONS": detected["DETECTIONS"],
                "NUM_FACES": detected["NUM_FACES"],
            }
        )
        np.testing.assert_array_equal(got["FACE_BOXES"], detected["FACE_BOXES"][0])
        np.testing.assert_array_equal(got["FACE_COUNT"], detected["FACE_COUNT"][0])
        for key in ("LANDMARKS", "POSE", "PARAMS"):
            np.testing.assert_allclose(
                got[key], want[key][0], rtol=1e-5, atol=1e-3, err_msg=f"{name} {key}"
            )


def test_native_layout_sequence(ort_client, landmark_pipeline, test_images):
    """face_tracker with the graph as its detector (BlsDetector: detection, and the tracked
    crop's check as uint8 frames) follows the in-process tracker on a short clip."""
    frames = make_clip(test_images["JianzhuGuo.jpg"], frames=5, still=1, amplitude=8.0).frames
    outputs = (*OUTPUTS, "TRACK_IDS", "DETECTED")
    sequence = 8102
    for i, (got, want) in enumerate(
        tracked_pairs(ort_client, landmark_pipeline, frames, outputs, sequence)
    ):
        assert bool(got["DETECTED"][0]) == bool(want["DETECTED"][0]) == (i == 0)
        np.testing.assert_array_equal(got["TRACK_IDS"], want["TRACK_IDS"])
        # this clip's face: the graph's box equals the Detector's, so everything after does
        for key in ("FACE_COUNT", "LANDMARKS", "POSE", "PARAMS"):
            np.testing.assert_allclose(
                got[key], want[key], rtol=1e-5, atol=1e-3, err_msg=f"frame {i} {key}"
            )
        np.testing.assert_allclose(got["FACE_BOXES"][:, 4], want["FACE_BOXES"][:, 4], atol=5e-3)
