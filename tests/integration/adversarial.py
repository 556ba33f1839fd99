"""Shared by the adversarial suite (test_adversarial_*.py): requests no well-behaved client
sends, built by hand; "the server still gives the right answer" checks; stub processes.

Everything goes against the ensemble's public contract (``tddfa.contract``: model, IMAGE,
outputs), never against step names, so the suite holds whatever the steps are.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tddfa.contract import IMAGE_INPUT, STATELESS_ENSEMBLE
from tddfa_tools.serve.stubs import Stub, find_stubs

MODEL = STATELESS_ENSEMBLE
RECOVERY_S = 10.0  # a killed stub serves again within 10 s on the 2-core box
CHECKED_OUTPUTS = ("FACE_COUNT", "FACE_BOXES", "LANDMARKS")


@dataclasses.dataclass(frozen=True)
class Answer:
    """The parts of an answer a test compares (rows beyond the face count dropped)."""

    count: int
    boxes: np.ndarray
    landmarks: np.ndarray

    def assert_equals(self, other: Answer) -> None:
        assert other.count == self.count, f"{other.count} faces, expected {self.count}"
        np.testing.assert_allclose(other.boxes, self.boxes, atol=1e-3)
        np.testing.assert_allclose(other.landmarks, self.landmarks, atol=1e-2)


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition(":")
    return host, int(port)


# -- HTTP --------------------------------------------------------------------------------
def http_request(
    url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None,
    timeout: float = 60.0,
) -> tuple[int, dict, bytes]:  # fmt: skip
    """One raw HTTP/1.1 request; (status, headers, body)."""
    host, port = host_port(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def http_infer_binary(
    url: str, shape: list[int], data: bytes, datatype: str = "UINT8",
    outputs: tuple[str, ...] = CHECKED_OUTPUTS, timeout: float = 60.0,
) -> tuple[int, dict]:  # fmt: skip
    """Binary-extension inference with any declared shape; (status, JSON answer header)."""
    header = {
        "inputs": [
            {
                "name": IMAGE_INPUT,
                "shape": shape,
                "datatype": datatype,
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "outputs": [{"name": name, "parameters": {"binary_data": False}} for name in outputs],
    }
    text = json.dumps(header).encode()
    status, headers, body = http_request(
        url, "POST", f"/v2/models/{MODEL}/infer", text + data,
        {"Inference-Header-Content-Length": str(len(text)),
         "Content-Type": "application/octet-stream"},
        timeout,
    )  # fmt: skip
    return status, _json(body, headers)


def http_infer_json(
    url: str, shape: list[int], values: list, datatype: str = "UINT8",
    outputs: tuple[str, ...] = ("FACE_COUNT",), timeout: float = 60.0,
) -> tuple[int, dict]:  # fmt: skip
    """Pure JSON inference (values in the request body); (status, JSON answer)."""
    body = json.dumps(
        {
            "inputs": [{"name": IMAGE_INPUT, "shape": shape, "datatype": datatype, "data": values}],
            "outputs": [{"name": name} for name in outputs],
        }
    ).encode()
    status, headers, answer = http_request(
        url, "POST", f"/v2/models/{MODEL}/infer", body,
        {"Content-Type": "application/json"}, timeout,
    )  # fmt: skip
    return status, _json(answer, headers)


def _json(body: bytes, headers: dict) -> dict:
    length = int(headers.get("Inference-Header-Content-Length") or len(body))
    try:
        return json.loads(body[:length] or b"{}")
    except ValueError:
        return {"raw": body[:300]}


def answer_from_json(document: dict) -> Answer:
    outputs = {o["name"]: o for o in document["outputs"]}

    def array(name: str) -> np.ndarray:
        return np.asarray(outputs[name]["data"], np.float32).reshape(outputs[name]["shape"])

    count = int(array("FACE_COUNT").reshape(-1)[0])
    return Answer(count, array("FACE_BOXES")[0, :count], array("LANDMARKS")[0, :count])


def ready(url: str, path: str = f"/v2/models/{MODEL}/ready") -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}{path}", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# -- gRPC --------------------------------------------------------------------------------
def grpc_infer(
    url: str, shape: list[int], raw: bytes | None = None, uint_contents: list[int] | None = None,
    datatype: str = "UINT8", outputs: tuple[str, ...] = CHECKED_OUTPUTS, timeout: float = 60.0,
) -> tuple[grpc.StatusCode, str, service_pb2.ModelInferResponse | None]:  # fmt: skip
    """ModelInfer built by hand (any shape, raw bytes or typed contents);
    (status code, details, response or None)."""
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name=IMAGE_INPUT, datatype=datatype)
    tensor.shape.extend(shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    if uint_contents is not None:
        tensor.contents.uint_contents.extend(uint_contents)
    for name in outputs:
        request.outputs.add(name=name)
    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            response = stub.ModelInfer(request, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", None
    return grpc.StatusCode.OK, "", response


def answer_from_grpc(response: service_pb2.ModelInferResponse) -> Answer:
    arrays = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        dtype = np.int32 if tensor.datatype == "INT32" else np.float32
        arrays[tensor.name] = np.frombuffer(raw, dtype).reshape(tuple(tensor.shape))
    count = int(arrays["FACE_COUNT"].reshape(-1)[0])
    return Answer(count, arrays["FACE_BOXES"][0, :count], arrays["LANDMARKS"][0, :count])


# -- the good request --------------------------------------------------------------------
def good_answer(url: str, image: np.ndarray, timeout: float = 60.0) -> tuple[int, Answer | str]:
    """(HTTP status, Answer or the error text) for a well-formed request of ``image``."""
    status, document = http_infer_binary(
        url, [1, *image.shape], np.ascontiguousarray(image).tobytes(), timeout=timeout
    )
    if status != 200:
        return status, str(document.get("error", document))
    return status, answer_from_json(document)


def wait_until_right(url: str, image: np.ndarray, expected: Answer, within: float) -> float:
    """Send the good request until it gets the right answer; returns the seconds it took.
    A wrong answer fails at once; errors are retried until ``within`` has passed."""
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < within:
        status, answer = good_answer(url, image, timeout=within)
        if status == 200:
            expected.assert_equals(answer)
            return time.monotonic() - start
        last = f"HTTP {status}: {answer}"
        time.sleep(0.2)
    raise AssertionError(f"no right answer within {within:.0f} s; last: {last}")


# -- stubs and readiness -----------------------------------------------------------------
def stubs(server) -> list[Stub]:
    """The live stub processes of a RunningServer."""
    return find_stubs(server.process.shm_prefix)


class ReadinessLog:
    """Polls the ensemble's and the server's readiness in a thread (every 20 ms)."""

    def __init__(self, url: str):
        self.url = url
        self.samples: list[tuple[float, bool, bool]] = []  # (time, model ready, server ready)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            model = ready(self.url)
            server = ready(self.url, "/v2/health/ready")
            self.samples.append((time.monotonic(), model, server))
            time.sleep(0.02)

    def __enter__(self) -> ReadinessLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def model_not_ready_seen(self) -> bool:
        return any(not model for _, model, _ in self.samples)
