"""The Triton adapter (tddfa_triton.StepModel) with small fakes of the Python backend's
request, tensor and response types: one response per request, in order, errors isolated."""

import numpy as np
import pytest
from fake_pb_utils import FakeError, FakeRequest, FakeTensor, install, load_model


@pytest.fixture()
def pb_utils(monkeypatch):
    return install(monkeypatch)


def image_request(shape, dtype=np.uint8):
    return FakeRequest({"IMAGE": FakeTensor("IMAGE", np.zeros(shape, dtype))})


def test_detector_answers_each_request_in_order(pb_utils, built_repository):
    model = load_model(built_repository / "face_detector", "face_detector")
    requests = [
        image_request((1, 360, 640, 3)),
        image_request((1, 360, 640, 4)),  # 4 channels: refused
        FakeRequest({}),  # IMAGE missing
        image_request((1, 720, 1280, 3)),
        image_request((1, 360, 640, 3)),
    ]
    responses = model.execute(requests)
    assert len(responses) == len(requests)
    ok = [0, 3, 4]
    for i, response in enumerate(responses):
        if i in ok:
            assert response.error is None
            names = [t.name for t in response.output_tensors]
            assert names == ["FACE_BOXES", "FACE_COUNT", "DETECTIONS", "NUM_FACES"]
            assert response.output_tensors[0].array.shape == (1, 8, 5)
            assert response.output_tensors[1].array.tolist() == [[0]]  # blank frames
        else:
            assert response.error.code == FakeError.INVALID_ARG
    # the exact problem and fix reach the client, prefixed by the model that refused it
    assert responses[1].error.message == (
        "face_detector: IMAGE must be uint8 (H, W, 3) RGB, got uint8 (360, 640, 4) "
        "(4 channels, RGBA?): drop the alpha channel, e.g. image[..., :3]"
    )
    assert responses[2].error.message == "face_detector: input IMAGE is missing"


def test_internal_failure_answers_every_request(pb_utils, built_repository):
    model = load_model(built_repository / "face_detector", "face_detector")

    def explode(inputs):
        raise RuntimeError("boom")

    model.step.run = explode
    responses = model.execute([image_request((1, 64, 64, 3)), image_request((1, 64, 64, 3))])
    assert [r.error.code for r in responses] == [FakeError.INTERNAL] * 2
    assert "boom" in responses[0].error.message


def test_only_the_requested_outputs_are_returned(pb_utils, built_repository):
    model = load_model(built_repository / "face_detector", "face_detector")
    request = image_request((1, 64, 64, 3))
    request.requested_outputs = ("FACE_COUNT",)
    (response,) = model.execute([request])
    assert [t.name for t in response.output_tensors] == ["FACE_COUNT"]
