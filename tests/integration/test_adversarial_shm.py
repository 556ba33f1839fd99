"""Shared memory and the other admin APIs: registering the server's own Python-backend
regions (it crashed tritonserver 2.51 when an output was then written into one) and model
control are refused without the admin token, on both protocols; the local clients, which
hold the token, still use shared memory. Every refused call leaves every stub process and
tritonserver itself the same (the supervisor would hide a crash by healing it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from adversarial import MODEL, http_request, no_stub_dies, ready, wait_until_right
from tritonclient.utils import InferenceServerException

from tddfa_clients.triton_client import ClientError, FrameClient
from tddfa_tools.serve import admin_token
from tddfa_tools.serve.stubs import regions

pytestmark = pytest.mark.server


def _backend_region(server) -> str:
    names = regions(server.process.shm_prefix)
    assert names, "the Python backend of the server has no /dev/shm region"
    return names[0]


def test_backend_region_cannot_be_registered_over_http(ensemble_server, good_request) -> None:
    region = _backend_region(ensemble_server)
    body = json.dumps({"key": f"/{region}", "offset": 0, "byte_size": 4096}).encode()
    image, expected = good_request
    with no_stub_dies(ensemble_server):
        status, _, answer = http_request(
            ensemble_server.http_url, "POST", "/v2/systemsharedmemory/region/evil/register", body
        )
        assert status == 403 and b"restricted" in answer, answer
        status, _, answer = http_request(
            ensemble_server.http_url, "POST", "/v2/cudasharedmemory/region/evil/register",
            json.dumps({"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 64}).encode(),
        )  # fmt: skip
        assert status == 403, answer
        wait_until_right(ensemble_server.http_url, image, expected, within=1.0)


def test_backend_region_cannot_be_registered_over_grpc(ensemble_server, good_request) -> None:
    region = _backend_region(ensemble_server)
    image, expected = good_request
    with (
        no_stub_dies(ensemble_server),
        grpcclient.InferenceServerClient(ensemble_server.grpc_url) as client,
    ):
        with pytest.raises(InferenceServerException, match="restricted"):
            client.register_system_shared_memory("evil", f"/{region}", 4096, client_timeout=10)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.register_system_shared_memory(
                "evil", f"/{region}", 4096, client_timeout=10,
                headers={admin_token.GRPC_HEADER: "a-guess"},
            )  # fmt: skip
        assert (
            client.get_system_shared_memory_status(
                headers=admin_token.headers(ensemble_server.process.admin_token, "grpc")
            ).regions
            == {}
        )
        wait_until_right(ensemble_server.http_url, image, expected, within=1.0)


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", f"/v2/repository/models/{MODEL}/unload", b"{}"),
        (
            "POST",  # a model whose code travels in the request: code execution if allowed
            "/v2/repository/models/evil/load",
            json.dumps(
                {
                    "parameters": {
                        "config": json.dumps({"name": "evil", "backend": "python"}),
                        "file:1/model.py": "aW1wb3J0IG9zCg==",
                    }
                }
            ).encode(),
        ),
        ("POST", "/v2/repository/index", b"{}"),
        ("POST", "/v2/logging", json.dumps({"log_verbose_level": 5}).encode()),
        ("POST", "/v2/trace/setting", json.dumps({"trace_file": "/tmp/x"}).encode()),
    ],
    ids=["unload", "load-with-code", "index", "logging", "trace"],
)
def test_admin_apis_need_the_token(ensemble_server, good_request, method, path, body) -> None:
    image, expected = good_request
    with no_stub_dies(ensemble_server):
        status, _, answer = http_request(ensemble_server.http_url, method, path, body)
        assert status == 403 and b"restricted" in answer, (status, answer)
        assert ready(ensemble_server.http_url)
        wait_until_right(ensemble_server.http_url, image, expected, within=1.0)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_local_clients_hold_the_token_and_use_shared_memory(
    ensemble_server, good_request, protocol
) -> None:
    image, expected = good_request
    url = ensemble_server.http_url if protocol == "http" else ensemble_server.grpc_url
    with FrameClient(url, protocol, shared_memory="system", in_flight=2) as client:
        assert client.shared_memory_kind == "system"
        results = [client.infer(image) for _ in range(2)]
    for result in results:
        assert result.face_count == expected.count
        np.testing.assert_allclose(result.boxes, expected.boxes, atol=1e-3)


def test_without_the_token_shared_memory_is_refused_clearly(
    ensemble_server, good_request, monkeypatch
) -> None:
    monkeypatch.setenv(admin_token.ENV_TOKEN, "not-the-token")
    image, expected = good_request
    with pytest.raises(ClientError, match="restricted"):
        FrameClient(ensemble_server.http_url, "http", shared_memory="system")
    with FrameClient(ensemble_server.http_url, "http", shared_memory="auto") as client:
        assert client.shared_memory_kind == "none"  # falls back to the network
        assert client.infer(image).face_count == expected.count
