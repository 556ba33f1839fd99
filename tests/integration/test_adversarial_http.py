"""HTTP (binary extension) requests built to hurt: the server answers or refuses each with a
clear message and a good request right after gets the right answer, with every stub process
still the same (the supervisor would hide a death by healing it). The one exception is said
so: a shape whose byte count wraps kills the first step's Python stub inside Triton 2.51
(docs/security.md, before our code runs), and the supervisor brings it back within 10 s."""

from __future__ import annotations

import json

import numpy as np
import pytest
from adversarial import (
    FIRST_STEP,
    MODEL,
    RECOVERY_S,
    http_infer_binary,
    http_request,
    no_stub_dies,
    stub_dies_and_heals,
    wait_until_right,
)

pytestmark = pytest.mark.server


def _frame(height: int = 32, width: int = 32, channels: int = 3) -> bytes:
    return np.zeros((1, height, width, channels), np.uint8).tobytes()


def test_overflowing_shape_kills_the_first_step_and_the_supervisor_heals_it(
    ensemble_server, good_request
) -> None:
    """[1, 2**62 + 1, 4, 3] with 12 bytes: the byte count wraps to 12, Triton passes the
    request on, and the stub dies building the tensor (numpy: "array is too big")."""
    image, expected = good_request
    with stub_dies_and_heals(ensemble_server, FIRST_STEP):
        status, answer = http_infer_binary(
            ensemble_server.http_url, [1, 4611686018427387905, 4, 3], bytes(12), timeout=30
        )
        assert status == 500, answer  # answered, not hung
        assert f"Stub process '{FIRST_STEP}_" in answer.get("error", ""), answer
        wait_until_right(ensemble_server.http_url, image, expected, within=RECOVERY_S)


def test_negative_shape_is_refused_by_the_request_parser(ensemble_server, good_request) -> None:
    """[1, -16, -16, 3]: Triton's HTTP front end reads dims as unsigned and refuses it (over
    gRPC the same shape reaches the stub: test_adversarial_grpc)."""
    image, expected = good_request
    with no_stub_dies(ensemble_server):
        status, answer = http_infer_binary(
            ensemble_server.http_url, [1, -16, -16, 3], bytes(768), timeout=30
        )
        assert 400 <= status < 600 and "shape" in answer.get("error", ""), (status, answer)
        wait_until_right(ensemble_server.http_url, image, expected, within=1.0)


@pytest.mark.parametrize(
    "shape, data, datatype, message",
    [
        ([1, 32, 32, 4], _frame(channels=4), "UINT8", "IMAGE"),  # RGBA
        ([1, 32, 32, 3], np.zeros((1, 32, 32, 3), np.float32).tobytes(), "FP32", "FP32"),
        ([32, 32, 3], _frame()[: 32 * 32 * 3], "UINT8", "batch-size"),  # no batch axis
        ([1, 32, 32, 3], _frame()[:100], "UINT8", "IMAGE"),  # fewer bytes than the shape
        ([1, 8, 8, 3], _frame(8, 8), "UINT8", "minimum 16x16"),  # too small for a face
        ([1, 4097, 16, 3], _frame(4097, 16), "UINT8", "4096"),  # over the size limit
        ([1, 0, 32, 3], b"", "UINT8", "IMAGE"),  # empty
    ],
    ids=["rgba", "float", "no-batch", "short-data", "tiny", "too-tall", "empty"],
)
def test_bad_frames_are_refused_with_the_reason(
    ensemble_server, good_request, shape, data, datatype, message
) -> None:
    image, expected = good_request
    with no_stub_dies(ensemble_server):
        status, answer = http_infer_binary(ensemble_server.http_url, shape, data, datatype)
        assert 400 <= status < 500, (status, answer)
        assert message in answer.get("error", ""), answer
        wait_until_right(ensemble_server.http_url, image, expected, within=1.0)


def test_binary_size_larger_than_the_body_is_refused(ensemble_server, good_request) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE",
                    "shape": [1, 32, 32, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 1 << 30},
                }
            ]
        }
    ).encode()
    image, expected = good_request
    with no_stub_dies(ensemble_server):
        status, _, body = http_request(
            ensemble_server.http_url, "POST", f"/v2/models/{MODEL}/infer", header + _frame(),
            {"Inference-Header-Content-Length": str(len(header))},
        )  # fmt: skip
        assert 400 <= status < 500, body
        wait_until_right(ensemble_server.http_url, image, expected, within=1.0)


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"inputs": 5}', b"\xff\xfe" * 64, b'{"inputs": [{"name": "IMAGE"}]}'],
    ids=["truncated", "list", "inputs-not-list", "binary-garbage", "no-shape"],
)
def test_malformed_json_is_refused(ensemble_server, good_request, body) -> None:
    """Triton 2.51 answers unparsable request JSON with HTTP 500 and the parser's message."""
    image, expected = good_request
    with no_stub_dies(ensemble_server):
        status, _, answer = http_request(
            ensemble_server.http_url, "POST", f"/v2/models/{MODEL}/infer", body,
            {"Content-Type": "application/json"},
        )  # fmt: skip
        assert status in (400, 500), answer
        assert json.loads(answer)["error"], answer
        wait_until_right(ensemble_server.http_url, image, expected, within=1.0)


def test_unknown_output_and_model_are_refused(ensemble_server, good_request) -> None:
    image, expected = good_request
    with no_stub_dies(ensemble_server):
        status, answer = http_infer_binary(
            ensemble_server.http_url, [1, 32, 32, 3], _frame(), outputs=("NOT_AN_OUTPUT",)
        )
        assert 400 <= status < 500 and "NOT_AN_OUTPUT" in answer.get("error", ""), answer
        status, _, body = http_request(
            ensemble_server.http_url, "POST", "/v2/models/no_such_model/infer", b"{}"
        )
        assert status == 400 or status == 404, body
        wait_until_right(ensemble_server.http_url, image, expected, within=1.0)
