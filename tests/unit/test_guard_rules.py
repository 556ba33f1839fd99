"""The guard's checks (tools/guard/rules.py) on the poison requests of docs/security.md and their kin."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2

from tddfa_tools.guard.rules import (
    Limits,
    Refused,
    check_grpc_infer,
    check_http_infer,
    grpc_method_allowed,
    http_route_allowed,
)

LIMITS = Limits()


def _json_input(shape, data=None, binary=None, datatype="UINT8", **parameters):
    entry = {"name": "IMAGE", "shape": shape, "datatype": datatype}
    if data is not None:
        entry["data"] = data
    if binary is not None:
        parameters["binary_data_size"] = binary
    if parameters:
        entry["parameters"] = parameters
    return {"inputs": [entry]}


@pytest.mark.parametrize(
    "header, binary, status, message",
    [
        (_json_input([1, 60000, 60000, 3], data=[1, 2, 3]), 0, 413, "more than"),
        (_json_input([1, 4611686018427387905, 4, 3], binary=12), 12, 413, "more than"),
        (_json_input([1, -16, -16, 3], binary=768), 768, 400, "negative dimension"),
        (_json_input([1, 2, 2, 3], data=[300] * 12), 0, 400, "out of range for UINT8"),
        (_json_input([1, 2, 2, 3], data=[1] * 11), 0, 400, "holds 12 values"),
        (_json_input([1, 2, 2, 3], data=[1] * 13), 0, 400, "holds 12 values"),
        (_json_input([1, 2, 2, 3], data=[1.5] * 12), 0, 400, "not an integer"),
        (_json_input([1, 2, 2, 3], binary=11), 11, 400, "needs 12 bytes"),
        (_json_input([1, 2, 2, 3], binary=12), 24, 400, "the body has 24"),
        (_json_input([1, 2.0, 2, 3], binary=12), 12, 400, "list of integers"),
        (_json_input([1, 2, 2, 3], binary=12, datatype="BYTES"), 12, 400, "datatype"),
        (_json_input([1, 2, 2, 3], shared_memory_region="r"), 0, 403, "shared memory"),
        ({"inputs": 5}, 0, 400, "'inputs' list"),
        ([], 0, 400, "JSON object"),
    ],
    ids=[
        "json-bomb",
        "overflow",
        "negative",
        "uint8-300",
        "too-few",
        "too-many",
        "float",
        "short-binary",
        "extra-binary",
        "float-dim",
        "bytes",
        "shm",
        "inputs-int",
        "list",
    ],  # fmt: skip
)
def test_http_requests_refused(header, binary, status, message) -> None:
    with pytest.raises(Refused, match=message) as caught:
        check_http_infer(header, binary, LIMITS)
    assert caught.value.status == status


def test_http_good_requests_pass() -> None:
    check_http_infer(_json_input([1, 2, 2, 3], binary=12), 12, LIMITS)
    check_http_infer(_json_input([1, 2, 2, 3], data=[[[[0, 255, 1]] * 2] * 2]), 0, LIMITS)
    check_http_infer(_json_input([1, 4096, 4096, 3], binary=4096 * 4096 * 3), 50331648, LIMITS)


def _grpc(shape, raw=None, uint=None, datatype="UINT8"):
    request = service_pb2.ModelInferRequest(model_name="tddfa")
    tensor = request.inputs.add(name="IMAGE", datatype=datatype)
    tensor.shape.extend(shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    if uint is not None:
        tensor.contents.uint_contents.extend(uint)
    return request


@pytest.mark.parametrize(
    "request_, message",
    [
        (_grpc([1, -16, -16, 3], raw=bytes(768)), "negative dimension"),
        (_grpc([1, 4611686018427387905, 4, 3], raw=bytes(12)), "more than"),
        (_grpc([1, 2, 2, 3], raw=bytes(11)), "needs 12"),
        (_grpc([1, 2, 2, 3], uint=[300] * 12), "out of range for UINT8"),
        (_grpc([1, 2, 2, 3], uint=[3] * 5), "holds 12 values"),
    ],
    ids=["negative", "overflow", "short-raw", "uint8-300", "too-few"],
)
def test_grpc_requests_refused(request_, message) -> None:
    with pytest.raises(Refused, match=message):
        check_grpc_infer(request_, LIMITS)


def test_grpc_good_requests_pass() -> None:
    check_grpc_infer(_grpc([1, 2, 2, 3], raw=bytes(12)), LIMITS)
    check_grpc_infer(_grpc([1, 2, 2, 3], uint=[255] * 12), LIMITS)


def test_routes() -> None:
    assert http_route_allowed("POST", "/v2/models/tddfa/infer")
    assert http_route_allowed("POST", "/v2/models/tddfa/versions/1/infer")
    assert http_route_allowed("GET", "/v2/health/ready")
    assert http_route_allowed("GET", "/v2/models/tddfa/config")
    for method, path in [
        ("POST", "/v2/systemsharedmemory/region/x/register"),
        ("POST", "/v2/cudasharedmemory/region/x/register"),
        ("POST", "/v2/repository/models/tddfa/unload"),
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/logging"),
        ("POST", "/v2/trace/setting"),
        ("GET", "/v2/models/../../etc/passwd"),
        ("DELETE", "/v2/models/tddfa/infer"),
    ]:
        assert not http_route_allowed(method, path), path
    assert grpc_method_allowed("/inference.GRPCInferenceService/ModelInfer")
    assert not grpc_method_allowed("/inference.GRPCInferenceService/SystemSharedMemoryRegister")
    assert not grpc_method_allowed("/inference.GRPCInferenceService/RepositoryModelLoad")
    assert not grpc_method_allowed("/other.Service/ModelInfer")
