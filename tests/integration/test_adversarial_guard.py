"""`tddfa guard` in front of the real ensemble: the poison requests (docs/security.md) never reach
a stub (every stub process the same, nothing reloaded), admin and shared-memory endpoints do not exist, and
well-formed clients (tritonclient, FrameClient, the CLI) work through it unchanged."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from adversarial import grpc_infer, http_infer_binary, http_request, no_stub_dies, wait_until_right
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tddfa_clients.triton_client import FrameClient

pytestmark = pytest.mark.server

POISON = [
    ([1, 4611686018427387905, 4, 3], bytes(12)),
    ([1, -16, -16, 3], bytes(768)),
]


@pytest.mark.parametrize("shape, data", POISON, ids=["overflow", "negative"])
def test_poison_shapes_stop_at_the_guard(ensemble_server, good_request, guard, shape, data):
    http_url, grpc_url = guard
    image, expected = good_request
    with no_stub_dies(ensemble_server):
        status, answer = http_infer_binary(http_url, shape, data)
        assert status in (400, 413), answer
        code, details, _ = grpc_infer(grpc_url, shape, data)
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert details
        wait_until_right(http_url, image, expected, within=1.0)


def test_typed_contents_out_of_range_stop_at_the_guard(ensemble_server, guard) -> None:
    with no_stub_dies(ensemble_server):
        code, details, _ = grpc_infer(guard[1], [1, 32, 32, 3], uint_contents=[300] * 3072)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "out of range" in details


@pytest.mark.parametrize(
    "path",
    [
        "/v2/systemsharedmemory/region/evil/register",
        "/v2/cudasharedmemory/region/evil/register",
        "/v2/repository/models/tddfa/unload",
        "/v2/repository/index",
        "/v2/logging",
        "/v2/trace/setting",
    ],
)
def test_admin_http_endpoints_do_not_exist_behind_the_guard(guard, path) -> None:
    status, _, body = http_request(guard[0], "POST", path, b"{}")
    assert status == 403 and b"not served here" in body


def test_admin_grpc_methods_do_not_exist_behind_the_guard(guard) -> None:
    with grpc.insecure_channel(guard[1]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for call, request in [
            (stub.SystemSharedMemoryRegister, service_pb2.SystemSharedMemoryRegisterRequest(
                name="evil", key="/x", byte_size=16)),
            (stub.RepositoryModelUnload, service_pb2.RepositoryModelUnloadRequest(
                model_name="tddfa")),
            (stub.LogSettings, service_pb2.LogSettingsRequest()),
        ]:  # fmt: skip
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_shared_memory_parameters_are_refused(guard) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                    "parameters": {"shared_memory_region": "x", "shared_memory_byte_size": 3072},
                }
            ]
        }
    ).encode()  # fmt: skip
    status, _, body = http_request(guard[0], "POST", "/v2/models/tddfa/infer", header)
    assert status == 403 and b"shared memory" in body


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_frame_client_works_through_the_guard(guard, good_request, protocol) -> None:
    image, expected = good_request
    url = guard[0] if protocol == "http" else guard[1]
    with FrameClient(url, protocol, shared_memory="none", in_flight=2) as client:
        results = [r for _, r in client.infer_stream([(i, image) for i in range(3)])]
    for result in results:
        assert result.face_count == expected.count
        np.testing.assert_allclose(result.boxes, expected.boxes, atol=1e-3)
        assert result.rendered.shape == image.shape


def test_streaming_infer_is_checked_message_by_message(
    ensemble_server, guard, good_request
) -> None:
    """ModelStreamInfer through the guard: a good frame is answered, a poison one ends the
    stream with INVALID_ARGUMENT before it reaches the server."""
    import queue

    import tritonclient.grpc as grpcclient

    image, expected = good_request
    answers: queue.Queue = queue.Queue()

    def send(shape, data: bytes) -> None:
        tensor = grpcclient.InferInput("IMAGE", shape, "UINT8")
        if min(shape) >= 0 and len(data) == int(np.prod(shape)):
            tensor.set_data_from_numpy(np.frombuffer(data, np.uint8).reshape(shape))
        else:  # a shape tritonclient would refuse to send: set the bytes as an attacker would
            tensor._raw_content = data  # noqa: SLF001
        client.async_stream_infer(
            "tddfa", [tensor], outputs=[grpcclient.InferRequestedOutput("FACE_COUNT")]
        )

    with no_stub_dies(ensemble_server), grpcclient.InferenceServerClient(guard[1]) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        send([1, *image.shape], np.ascontiguousarray(image).tobytes())
        result, error = answers.get(timeout=60)
        assert error is None, error
        assert int(result.as_numpy("FACE_COUNT")[0, 0]) == expected.count
        send([1, -16, -16, 3], bytes(768))
        result, error = answers.get(timeout=60)
        assert result is None and "negative dimension" in str(error)
        client.stop_stream()
