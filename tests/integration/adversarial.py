"""Shared by the adversarial suite (test_adversarial_*.py): requests no well-behaved client
sends, built by hand; "the server still gives the right answer" checks; stub processes,
and the checks that a request killed none (or, where Triton cannot avoid it, exactly one,
healed by the supervisor).

Everything goes against the ensemble's public contract (``tddfa.contract``: model, IMAGE,
outputs) and the declared graph (``tddfa.graph``: which step reads IMAGE first), never
against step names typed here, so the suite holds whatever the steps are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tddfa.contract import IMAGE_INPUT, STATELESS_ENSEMBLE
from tddfa.graph import ENSEMBLES
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


# -- stubs: alive, or died and healed ----------------------------------------------------
# The servers of the suite run under the supervisor, which reloads a model whose stub died:
# a test that only checks "a good request works afterwards" passes whether or not its
# request killed a stub. So every bad request is sent inside `no_stub_dies` (nothing died,
# nothing was healed) or `stub_dies_and_heals` (the death Triton 2.51 cannot avoid, said so).
FIRST_STEP = ENSEMBLES[MODEL].steps[0]  # the step that reads IMAGE first: where poison lands


def stubs(server) -> list[Stub]:
    """The live stub processes of a RunningServer."""
    return find_stubs(server.process.shm_prefix)


@dataclasses.dataclass(frozen=True)
class Vitals:
    """What a dead stub changes, seen from outside: the live stub of every model instance
    (its pid: a stub started again has a new one), the supervisor's counters, the server."""

    server_pid: int
    stub_pids: dict[tuple[str, str], int]  # (model, instance) -> pid
    failures: dict[tuple[str, str], int]  # (model, cause) -> count
    reloads: dict[str, int]  # model -> count
    server_restarts: int

    @classmethod
    def of(cls, server) -> Vitals:
        metrics = server.supervisor.metrics
        return cls(
            server.process.pid,
            {(stub.model, stub.instance): stub.pid for stub in stubs(server)},
            dict(metrics.failures),
            dict(metrics.reloads),
            metrics.server_restarts,
        )

    def without(self, model: str) -> Vitals:
        """The same, blind to ``model``."""
        return dataclasses.replace(
            self,
            stub_pids={k: v for k, v in self.stub_pids.items() if k[0] != model},
            failures={k: v for k, v in self.failures.items() if k[0] != model},
            reloads={k: v for k, v in self.reloads.items() if k != model},
        )

    def changes(self, later: Vitals) -> list[str]:
        """What differs in ``later``, in words (empty: nothing died, nothing was healed)."""
        found = []
        for label, before, after in (
            ("stub pid", self.stub_pids, later.stub_pids),
            ("supervisor failures", self.failures, later.failures),
            ("supervisor reloads", self.reloads, later.reloads),
        ):
            found += [
                f"{label} {key}: {before.get(key)} -> {after.get(key)}"
                for key in sorted(set(before) | set(after))
                if before.get(key) != after.get(key)
            ]
        if (self.server_pid, self.server_restarts) != (later.server_pid, later.server_restarts):
            found.append(f"tritonserver restarted (pid {self.server_pid} -> {later.server_pid})")
        return found


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


def _settle(server) -> None:
    """Two supervisor polls: a death that already happened is counted (and being healed)."""
    time.sleep(2 * server.supervisor.settings.poll_interval)


def healed(server, within: float = RECOVERY_S) -> bool:
    """Wait until the supervisor reports every model serving (no heal under way); False when
    it still does not after ``within`` s."""
    deadline = time.monotonic() + within
    while not server.supervisor.metrics.all_healthy():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def no_stub_dies(server) -> Iterator[None]:
    """The block must leave every stub of ``server`` running: the same pids, nothing counted
    or reloaded by the supervisor, the same tritonserver."""
    assert healed(server), f"broken before the test: {server.supervisor.metrics.summary()}"
    before = Vitals.of(server)
    yield
    _settle(server)
    changes = before.changes(Vitals.of(server))
    if changes:
        healed(server, within=3 * RECOVERY_S)  # the next test starts from a served model
    assert not changes, f"a stub died (the supervisor hides it by reloading): {changes}"


@contextlib.contextmanager
def stub_dies_and_heals(server, model: str, within: float = RECOVERY_S) -> Iterator[None]:
    """The block must kill the stub of ``model`` and nothing else; within ``within`` s of its
    end the supervisor must have counted the failure, reloaded ``model`` once and report
    every model healthy, with a new stub for each instance of ``model``."""
    assert healed(server), f"broken before the test: {server.supervisor.metrics.summary()}"
    before = Vitals.of(server)
    dead = {key: pid for key, pid in before.stub_pids.items() if key[0] == model}
    assert dead, f"{model} has no stub to kill: {sorted(before.stub_pids)}"
    yield
    deadline = time.monotonic() + within
    while True:
        after = Vitals.of(server)
        if (
            all(after.stub_pids.get(key) not in (None, pid) for key, pid in dead.items())
            and after.reloads.get(model, 0) > before.reloads.get(model, 0)
            and server.supervisor.metrics.all_healthy()
        ):
            break
        assert time.monotonic() < deadline, (
            f"{model}: not killed and healed within {within:.0f} s: {before.changes(after)}"
        )
        time.sleep(0.1)
    _settle(server)  # one heal, not a second one queued behind it
    after = Vitals.of(server)
    others = before.without(model).changes(after.without(model))
    assert not others, f"more than {model} died or was reloaded: {others}"
    assert after.reloads[model] == before.reloads.get(model, 0) + 1, before.changes(after)
    causes = {
        cause for (name, cause), n in after.failures.items()
        if name == model and n > before.failures.get((name, cause), 0)
    }  # fmt: skip
    assert causes, f"the supervisor counted no failure of {model}: {before.changes(after)}"
