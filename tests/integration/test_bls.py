"""The networks as models of their own, called through BLS, on a real tritonserver.

`tddfa build --networks models` serves face_regressor as a Python model and has face_aligner
and face_tracker call it (and face_tracker the face_detector model) through BLS: the layout of
the onnxruntime and tensorrt flavours, which the embedded server cannot load. Both ensembles
must give what the in-process build gives, and the served network models must have done the
work (their request counters move). Few frames: CI has two shared cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tddfa.contract import SEQUENCE_ENSEMBLE, STATELESS_ENSEMBLE
from tddfa_tools.motion_clip import make_clip

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ("FACE_COUNT", "FACE_BOXES", "LANDMARKS", "POSE", "PARAMS")
PHOTOS = ("emma.jpg", "JianzhuGuo.jpg")  # three faces and one


@pytest.fixture(scope="module")
def model_repository(asset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU build with the networks as models (served by `triton_server`)."""
    from tddfa_tools.repository import BuildOptions, build_repository

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


def test_the_build_calls_served_models(model_repository):
    from tddfa_tools.model_config import check_bls, load_repository

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
        want = {n: a[0] for n, a in landmark_pipeline.track(frame, sequence, i == 0).items()}
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
    # frame 0 detected through face_detector, frames 1.. had their crop checked by it
    assert requests_of(client, "face_detector") - detector_before == len(frames)
    assert requests_of(client, "face_regressor") - regressor_before == len(frames)
