"""HTTP (binary extension) requests built to hurt: the server answers or refuses each with a
clear message and a good request right after gets the right answer. The two poison shapes of
docs/security.md kill a Python stub inside Triton 2.51 (before our code runs); the supervisor brings
it back within 10 s."""

from __future__ import annotations

import json

import numpy as np
import pytest
from adversarial import (
    MODEL,
    RECOVERY_S,
    http_infer_binary,
    http_request,
    wait_until_right,
)

pytestmark = pytest.mark.server


def _frame(height: int = 32, width: int = 32, channels: int = 3) -> bytes:
    return np.zeros((1, height, width, channels), np.uint8).tobytes()


@pytest.mark.parametrize(
    "shape, data",
    [
        ([1, 4611686018427387905, 4, 3], bytes(12)),  # 2**62 + 1 rows: the byte count wraps
        ([1, -16, -16, 3], bytes(768)),  # negative dims whose product is positive
    ],
    ids=["overflowing-shape", "negative-shape"],
)
def test_poison_shapes_are_answered_and_the_service_comes_back(
    ensemble_server, good_request, shape, data
) -> None:
    status, answer = http_infer_binary(ensemble_server.http_url, shape, data, timeout=30)
    assert status >= 400, f"a poison request was answered with {status}: {answer}"
    assert answer.get("error"), answer  # an error message, not a hang or a dropped socket
    image, expected = good_request
    wait_until_right(ensemble_server.http_url, image, expected, within=RECOVERY_S)


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
    status, answer = http_infer_binary(ensemble_server.http_url, shape, data, datatype)
    assert 400 <= status < 500, (status, answer)
    assert message in answer.get("error", ""), answer
    image, expected = good_request
    wait_until_right(ensemble_server.http_url, image, expected, within=1.0)  # no harm done


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
    status, _, body = http_request(
        ensemble_server.http_url, "POST", f"/v2/models/{MODEL}/infer", header + _frame(),
        {"Inference-Header-Content-Length": str(len(header))},
    )  # fmt: skip
    assert 400 <= status < 500, body
    image, expected = good_request
    wait_until_right(ensemble_server.http_url, image, expected, within=1.0)


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"inputs": 5}', b"\xff\xfe" * 64, b'{"inputs": [{"name": "IMAGE"}]}'],
    ids=["truncated", "list", "inputs-not-list", "binary-garbage", "no-shape"],
)
def test_malformed_json_is_refused(ensemble_server, good_request, body) -> None:
    """Triton 2.51 answers unparsable request JSON with HTTP 500 and the parser's message."""
    status, _, answer = http_request(
        ensemble_server.http_url, "POST", f"/v2/models/{MODEL}/infer", body,
        {"Content-Type": "application/json"},
    )  # fmt: skip
    assert status in (400, 500), answer
    assert json.loads(answer)["error"], answer
    image, expected = good_request
    wait_until_right(ensemble_server.http_url, image, expected, within=1.0)


def test_unknown_output_and_model_are_refused(ensemble_server, good_request) -> None:
    status, answer = http_infer_binary(
        ensemble_server.http_url, [1, 32, 32, 3], _frame(), outputs=("NOT_AN_OUTPUT",)
    )
    assert 400 <= status < 500 and "NOT_AN_OUTPUT" in answer.get("error", ""), answer
    status, _, body = http_request(
        ensemble_server.http_url, "POST", "/v2/models/no_such_model/infer", b"{}"
    )
    assert status == 400 or status == 404, body
    image, expected = good_request
    wait_until_right(ensemble_server.http_url, image, expected, within=1.0)
