"""gRPC requests built to hurt (ModelInfer by hand), a wrong port or protocol, and a stuck
call: answered or refused with a clear message, a good request right after gets the right
answer, and every stub process is still the same (the supervisor would hide a death by
healing it). Said so where Triton 2.51 cannot avoid a death: a negative or wrapping shape
kills the first step's Python stub (docs/security.md, before our code runs); the supervisor
brings it back within 10 s."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from adversarial import (
    FIRST_STEP,
    RECOVERY_S,
    answer_from_grpc,
    grpc_infer,
    no_stub_dies,
    stub_dies_and_heals,
    wait_until_right,
)

from tddfa_clients.triton_client import FrameClient, ProtocolMismatch

pytestmark = pytest.mark.server


@pytest.mark.parametrize(
    "shape, raw",
    [
        ([1, -16, -16, 3], bytes(768)),  # numpy: "negative dimensions are not allowed"
        ([1, 4611686018427387905, 4, 3], bytes(12)),  # 2**62 + 1 rows: the byte count wraps
    ],
    ids=["negative-shape", "overflowing-shape"],
)
def test_poison_shapes_kill_the_first_step_and_the_supervisor_heals_it(
    ensemble_server, good_request, shape, raw
) -> None:
    """Triton passes both shapes to the first step's stub, which dies building the tensor;
    the request is answered (not hung) and the service comes back."""
    image, expected = good_request
    with stub_dies_and_heals(ensemble_server, FIRST_STEP):
        code, details, _ = grpc_infer(ensemble_server.grpc_url, shape, raw, timeout=30)
        assert code == grpc.StatusCode.INTERNAL, (code, details)  # answered, not hung
        assert f"Stub process '{FIRST_STEP}_" in details, details
        wait_until_right(ensemble_server.http_url, image, expected, within=RECOVERY_S)
    code, details, response = grpc_infer(
        ensemble_server.grpc_url, [1, *image.shape], np.ascontiguousarray(image).tobytes()
    )
    assert code == grpc.StatusCode.OK, details
    expected.assert_equals(answer_from_grpc(response))


def test_typed_contents_out_of_uint8_range(ensemble_server, good_request) -> None:
    """Triton 2.51 keeps the low byte of each uint_contents value (300 -> 44) before any
    model sees it (grpc/infer_handler.cc); the server must stay sound. docs/security.md says
    to keep typed contents off an exposed port (the proxy)."""
    values = [300] * (32 * 32 * 3)
    image, expected = good_request
    with no_stub_dies(ensemble_server):
        code, details, response = grpc_infer(
            ensemble_server.grpc_url, [1, 32, 32, 3], uint_contents=values
        )
        assert code == grpc.StatusCode.OK, details  # a 32x32 frame of 44s: no face
        assert answer_from_grpc(response).count == 0
        wait_until_right(ensemble_server.http_url, image, expected, within=1.0)


@pytest.mark.parametrize(
    "shape, raw, fragment",
    [
        ([1, 32, 32, 3], bytes(100), "byte size mismatch"),  # fewer bytes than the shape
        ([1, 32, 32, 4], bytes(32 * 32 * 4), "IMAGE"),
        ([1, 8, 8, 3], bytes(8 * 8 * 3), "16x16"),
    ],
    ids=["short-data", "rgba", "tiny"],
)
def test_bad_frames_are_refused(ensemble_server, good_request, shape, raw, fragment) -> None:
    image, expected = good_request
    with no_stub_dies(ensemble_server):
        code, details, _ = grpc_infer(ensemble_server.grpc_url, shape, raw)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert fragment in details, details
        wait_until_right(ensemble_server.http_url, image, expected, within=1.0)


def test_grpc_client_on_the_http_port_gets_a_hint_at_once(ensemble_server) -> None:
    start = time.monotonic()
    with pytest.raises(ProtocolMismatch, match="pass --protocol http"):
        FrameClient(ensemble_server.http_url, "grpc")
    with pytest.raises(ProtocolMismatch, match="pass --protocol grpc"):
        FrameClient(ensemble_server.grpc_url, "http")
    with pytest.raises(ProtocolMismatch, match="metrics port"):
        FrameClient(ensemble_server.metrics_url.split("//")[1].split("/")[0], "http")
    assert time.monotonic() - start < 10  # three probes, no retries


def test_a_deadline_ends_a_slow_call(ensemble_server, good_request) -> None:
    """A call that cannot finish in time ends with DEADLINE_EXCEEDED instead of hanging."""
    image, _ = good_request
    with no_stub_dies(ensemble_server):
        code, _, _ = grpc_infer(
            ensemble_server.grpc_url, [1, *image.shape], image.tobytes(), timeout=0.001
        )
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
