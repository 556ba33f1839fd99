"""What the guard (``tddfa guard``) lets through to tritonserver: pure checks, no I/O.

Triton 2.51 trusts a request's declared shapes further than it should (checked
against server/core r24.10 sources; docs/security.md):

- HTTP JSON: ``http_server.cc`` allocates ``element count x dtype size`` bytes for the
  ``data`` of an input *before* reading it: ``[1, 60000, 60000, 3]`` with three values costs
  10.8 GB, and a shape larger than memory aborts the server (``std::bad_alloc``).
- Shapes whose element count overflows 64 bits (``[1, 2**62 + 1, 4, 3]`` is 12 bytes) or
  with negative dimensions whose product is positive (``[1, -16, -16, 3]``) pass Triton's
  byte-size check and kill the Python stub that receives them.
- Integer values out of range are narrowed silently (UINT8 ``300`` becomes ``44``: JSON
  ``data`` and gRPC ``uint_contents``).
- The shared-memory, model-repository, logging and trace APIs act on the server's host.

So every inference request is checked here first: shapes are non-negative integers whose
element count (exact, Python integers) fits :class:`Limits`; binary and raw tensors have
exactly the bytes their shape needs; JSON and typed values are counted and range-checked
without allocating anything from the declared shape; shared-memory parameters are refused;
only inference, metadata, health and statistics endpoints exist.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

DTYPE_BYTES = {
    "BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
    "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8,
}  # fmt: skip
INTEGER_RANGES = {
    "BOOL": (0, 1), "UINT8": (0, 255), "INT8": (-128, 127), "UINT16": (0, 65535),
    "INT16": (-32768, 32767), "UINT32": (0, 2**32 - 1), "INT32": (-(2**31), 2**31 - 1),
    "UINT64": (0, 2**64 - 1), "INT64": (-(2**63), 2**63 - 1),
}  # fmt: skip
# gRPC typed contents field per datatype (InferTensorContents)
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}  # fmt: skip
SHM_PARAMETERS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")

_MODEL = r"/v2/models/[A-Za-z0-9_.\-]+(?:/versions/[0-9]+)?"
HTTP_ROUTES = (
    ("GET", re.compile(r"/v2(?:/health/(?:live|ready))?")),
    ("GET", re.compile(rf"{_MODEL}(?:/ready|/config|/stats)?")),
    ("POST", re.compile(rf"{_MODEL}/infer")),
)
GRPC_SERVICE = "inference.GRPCInferenceService"
GRPC_METHODS = frozenset(
    {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelConfig", "ModelStatistics", "ModelInfer", "ModelStreamInfer",
    }
)  # fmt: skip


class Refused(Exception):
    """The request does not pass; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 << 20  # one request on the wire
    max_json_bytes: int = 1 << 20  # JSON part of a request (header, or a pure-JSON body)
    max_tensor_bytes: int = 4096 * 4096 * 3  # one input: a 4096x4096 RGB frame


def http_route_allowed(method: str, path: str) -> bool:
    path = path.split("?", 1)[0]
    return any(method == m and pattern.fullmatch(path) for m, pattern in HTTP_ROUTES)


def grpc_method_allowed(method: str) -> bool:
    """``method`` as gRPC names it: ``/inference.GRPCInferenceService/ModelInfer``."""
    service, _, name = method.strip("/").partition("/")
    return service == GRPC_SERVICE and name in GRPC_METHODS


def tensor_bytes(name: str, shape: Any, datatype: Any, limits: Limits) -> tuple[int, int]:
    """(element count, bytes) of a tensor whose shape and datatype a client declared."""
    if datatype not in DTYPE_BYTES:
        raise Refused(f"input {name}: datatype {datatype!r} is not accepted here")
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise Refused(f"input {name}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise Refused(f"input {name}: negative dimension in shape {list(shape)}")
    count = math.prod(shape)  # Python integers: no overflow
    size = count * DTYPE_BYTES[datatype]
    if size > limits.max_tensor_bytes:
        raise Refused(
            f"input {name}: shape {list(shape)} {datatype} is {size} bytes, more than the "
            f"{limits.max_tensor_bytes} allowed",
            413,
        )
    return count, size


def _flatten(values: Any) -> Iterator[Any]:
    if isinstance(values, list):
        for value in values:
            yield from _flatten(value)
    else:
        yield values


def check_values(name: str, datatype: str, values: Iterable[Any], count: int) -> None:
    """Exactly ``count`` values, each of the datatype's kind and range."""
    low_high = INTEGER_RANGES.get(datatype)
    seen = 0
    for value in values:
        seen += 1
        if seen > count:
            break
        if datatype == "BOOL":
            if not isinstance(value, bool) and value not in (0, 1):
                raise Refused(f"input {name}: {value!r} is not a BOOL")
        elif low_high is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise Refused(f"input {name}: {value!r} is not an integer ({datatype})")
            if not low_high[0] <= value <= low_high[1]:
                raise Refused(
                    f"input {name}: {value} is out of range for {datatype} "
                    f"[{low_high[0]}, {low_high[1]}] (Triton would wrap it silently)"
                )
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            raise Refused(f"input {name}: {value!r} is not a number ({datatype})")
    if seen != count:
        raise Refused(
            f"input {name}: the shape holds {count} values, the request "
            f"{'more' if seen > count else seen}"
        )


def _no_shared_memory(where: str, parameters: Any) -> None:
    if isinstance(parameters, dict) and any(p in parameters for p in SHM_PARAMETERS):
        raise Refused(f"{where}: shared memory is not available through this proxy", 403)


def check_http_infer(header: Any, binary_bytes: int, limits: Limits) -> None:
    """The JSON part of an HTTP inference request, with ``binary_bytes`` of binary data
    after it (0 for a pure-JSON request)."""
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise Refused("the request must be a JSON object with an 'inputs' list")
    expected_binary = 0
    for entry in header["inputs"]:
        if not isinstance(entry, dict):
            raise Refused("each input must be a JSON object")
        name = str(entry.get("name"))
        parameters = entry.get("parameters") or {}
        _no_shared_memory(f"input {name}", parameters)
        count, size = tensor_bytes(name, entry.get("shape"), entry.get("datatype"), limits)
        if "binary_data_size" in parameters:
            declared = parameters["binary_data_size"]
            if declared != size:
                raise Refused(
                    f"input {name}: binary_data_size {declared} but its shape needs {size} bytes"
                )
            expected_binary += size
        elif "data" in entry:
            check_values(name, entry["datatype"], _flatten(entry["data"]), count)
        else:
            raise Refused(f"input {name}: no data")
    for entry in header.get("outputs") or []:
        if isinstance(entry, dict):
            _no_shared_memory(f"output {entry.get('name')}", entry.get("parameters"))
    if expected_binary != binary_bytes:
        raise Refused(
            f"the inputs declare {expected_binary} bytes of binary data, the body has "
            f"{binary_bytes}"
        )


def check_grpc_infer(request: Any, limits: Limits) -> None:
    """A ``ModelInferRequest`` (tritonclient.grpc.service_pb2)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise Refused("raw_input_contents must hold one entry per input")
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        _no_shared_memory(f"input {name}", dict(tensor.parameters))
        count, size = tensor_bytes(name, list(tensor.shape), tensor.datatype, limits)
        if raw:
            if len(raw[index]) != size:
                raise Refused(
                    f"input {name}: {len(raw[index])} raw bytes but its shape needs {size}"
                )
        else:
            field = CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                raise Refused(f"input {name}: send {tensor.datatype} as raw_input_contents")
            check_values(name, tensor.datatype, getattr(tensor.contents, field), count)
    for output in request.outputs:
        _no_shared_memory(f"output {output.name}", dict(output.parameters))
