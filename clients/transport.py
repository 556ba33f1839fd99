"""How the clients talk to a server: the HTTP/gRPC differences, deadlines, keepalive, the
admin token on shared-memory calls, gRPC streams for sequences, and what a server serves.

:class:`Transport` is the one place that calls tritonclient's ``InferenceServerClient``;
:class:`~tddfa_clients.triton_client.FrameClient` builds requests on top of it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import os
import secrets
import socket
from collections.abc import Iterable
from typing import Any

import numpy as np

from tddfa.contract import STATELESS_ENSEMBLE
from tddfa_clients.errors import translate_error
from tddfa_clients.port_probe import DEFAULT_PORTS, PROTOCOLS
from tddfa_tools.serve import admin_token

LOG = logging.getLogger(__name__)
INPUT = "IMAGE"

# gRPC keepalive: while a request waits, ping the server every 60 s and drop the connection
# when a ping goes unanswered for 20 s (a replica that vanished without closing its
# connections: node failure, network partition); the request then fails as unavailable and
# goes to another replica. No pings on an idle channel and at most 2 without data: within
# tritonserver's default ping policy (5 min between data-less pings, 2 strikes), so the
# server never closes the channel for "too many pings".
GRPC_KEEPALIVE = {
    "keepalive_time_ms": 60_000,
    "keepalive_timeout_ms": 20_000,
    "keepalive_permit_without_calls": False,
    "http2_max_pings_without_data": 2,
}


def normalize_url(url: str, protocol: str) -> str:
    """'host[:port]' without a scheme, with the protocol's default port added."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    url = url.split("://", 1)[-1].rstrip("/")
    if ":" not in url.rsplit("]", 1)[-1]:
        url = f"{url}:{DEFAULT_PORTS[protocol]}"
    return url


def client_shm_prefix(pid: int | None = None) -> str:
    """Name prefix of the shared-memory regions this process's clients create (system and
    CUDA): ``tddfa_client_<pid>_``, so a leak can be traced to its process."""
    return f"tddfa_client_{os.getpid() if pid is None else pid}_"


def is_local(url: str) -> bool:
    """True when ``url`` names this host (shared memory can work)."""
    host = url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0"):
        return True
    return host in (socket.gethostname(), socket.getfqdn())


def dims(values: Iterable[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)  # gRPC JSON gives int64 as strings


class Transport:
    """The differences between the HTTP and gRPC tritonclient modules. Every call has a
    deadline: HTTP through the connection/network timeouts, gRPC through ``client_timeout``
    on each call (tritonclient's gRPC calls wait forever without it)."""

    def __init__(self, protocol: str, url: str, concurrency: int, timeout: float):
        self.name = protocol
        self.timeout = timeout
        self.admin_headers = admin_token.headers(admin_token.find_token(url), protocol)
        if protocol == "http":
            import tritonclient.http as module

            self.client = module.InferenceServerClient(
                url, concurrency=concurrency, connection_timeout=timeout, network_timeout=timeout
            )
        else:
            import tritonclient.grpc as module

            keepalive = module.KeepAliveOptions(**GRPC_KEEPALIVE)
            self.client = module.InferenceServerClient(url, keepalive_options=keepalive)
        self.module = module
        self.timeout = timeout  # per request: HTTP's network_timeout, gRPC's client_timeout
        self._stream: dict[str, concurrent.futures.Future] | None = None  # gRPC sequences
        self._request_ids = itertools.count(1)

    def _deadline(self) -> dict:
        return {"client_timeout": self.timeout} if self.name == "grpc" else {}

    def model_config(self, model: str) -> dict:
        if self.name == "http":
            return self.client.get_model_config(model)
        return self.client.get_model_config(model, as_json=True, **self._deadline())["config"]

    def model_metadata(self, model: str) -> dict:
        if self.name == "http":
            return self.client.get_model_metadata(model)
        return self.client.get_model_metadata(model, as_json=True, **self._deadline())

    def shared_memory(self, call: str, *args: Any) -> Any:
        """A shared-memory (un)registration call, with the admin token and the deadline."""
        method = getattr(self.client, call)
        return method(*args, headers=self.admin_headers, **self._deadline())

    def output_shape(self, result: Any, name: str) -> tuple[int, ...]:
        output = result.get_output(name)
        return dims(output["shape"] if self.name == "http" else output.shape)

    def submit(
        self,
        model: str,
        inputs: list,
        outputs: list,
        sequence: SequenceFrame | None = None,
        parameters: dict | None = None,
    ) -> concurrent.futures.Future:
        """Start one async request (with request ``parameters``, e.g. render_mode); the
        future resolves to the InferResult.

        Frames of a sequence go over one gRPC stream, which keeps them in order; over HTTP
        the caller keeps one frame of a sequence in flight."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.name == "grpc" and sequence is not None:
            return self._submit_stream(model, inputs, outputs, sequence)
        extra = {} if sequence is None else sequence.request_arguments()
        if parameters:
            extra["parameters"] = {**parameters, **extra.get("parameters", {})}
        if self.name == "grpc":

            def done(result: Any, error: Any) -> None:
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

            self.client.async_infer(
                model, inputs, done, outputs=outputs, client_timeout=self.timeout, **extra
            )
            return future
        handle = self.client.async_infer(model, inputs, outputs=outputs, **extra)
        import gevent

        gevent.sleep(0)  # let the request greenlet send now, not when we first wait
        return _HttpFuture(handle)

    def _submit_stream(
        self, model: str, inputs: list, outputs: list, sequence: SequenceFrame
    ) -> concurrent.futures.Future:
        if self._stream is None:
            self._stream = {}
            self.client.start_stream(callback=self._stream_done)
        future: concurrent.futures.Future = concurrent.futures.Future()
        request_id = str(next(self._request_ids))
        self._stream[request_id] = future
        self.client.async_stream_infer(
            model, inputs, outputs=outputs, request_id=request_id, **sequence.request_arguments()
        )
        return future

    def _stream_done(self, result: Any, error: Any) -> None:
        if error is None:
            future = self._stream.pop(result.get_response().id, None)
            if future is not None:
                future.set_result(result)
            return
        # a stream error does not say which request failed: fail every pending one
        pending, self._stream = list(self._stream.values()), {}
        for future in pending:
            future.set_exception(error)

    def close(self) -> None:
        if self._stream is not None:
            self.client.stop_stream()
            self._stream = None
        self.client.close()


@dataclasses.dataclass(frozen=True)
class SequenceFrame:
    """One frame's place in a Triton sequence (the ``tddfa_track`` ensemble)."""

    sequence_id: int
    start: bool = False
    end: bool = False
    parameters: dict | None = None  # request parameters, e.g. {"smoothing": False}

    def request_arguments(self) -> dict[str, Any]:
        arguments = {
            "sequence_id": self.sequence_id,
            "sequence_start": self.start,
            "sequence_end": self.end,
        }
        if self.parameters:
            arguments["parameters"] = self.parameters
        return arguments


END_FRAME_SIDE = 64  # pixels: the frame that ends a sequence stopped early
END_WAIT_S = 5.0


def end_sequence(
    transport: Transport, model: str, sequence_id: int, batched: bool, timeout: float
) -> None:
    """End a sequence stopped early (an error, Ctrl-C, SIGTERM) now instead of at the
    server's idle timeout: one black frame with END, over the network, answer ignored."""
    module = transport.module
    shape = (END_FRAME_SIDE, END_FRAME_SIDE, 3)
    black = np.zeros((1, *shape) if batched else shape, np.uint8)
    tensor = module.InferInput(INPUT, list(black.shape), "UINT8")
    tensor.set_data_from_numpy(black)
    outputs = [module.InferRequestedOutput("FACE_COUNT")]
    try:
        future = transport.submit(model, [tensor], outputs, SequenceFrame(sequence_id, end=True))
        future.result(timeout=min(timeout, END_WAIT_S))
    except Exception as exc:  # noqa: BLE001  (already stopping: the idle timeout remains)
        LOG.debug("could not end sequence %d: %s", sequence_id, exc)


def new_sequence_id() -> int:
    """A random non-zero 63-bit sequence id (Triton's CORRID is uint64)."""
    return secrets.randbits(63) or 1


class _HttpFuture(concurrent.futures.Future):
    """Adapter: tritonclient.http InferAsyncRequest behind the Future interface."""

    def __init__(self, handle: Any):
        super().__init__()
        self._handle = handle

    def result(self, timeout: float | None = None) -> Any:
        return self._handle.get_result(timeout=timeout)


def served_models_from(protocol: Transport, model: str = "face_aligner") -> dict[str, str]:
    """Read the ``regressor`` and ``bfm`` parameters of ``model``'s config ("unknown" if unset)."""
    try:
        config = protocol.model_config(model)
    except Exception as exc:  # an older repository: report unknown, not fail the output
        LOG.warning("cannot read the config of %s: %s", model, translate_error(exc))
        config = {}
    parameters = config.get("parameters", {}) or {}

    def value(name: str) -> str:
        entry = parameters.get(name)
        if isinstance(entry, dict):
            return str(entry.get("string_value", "unknown"))
        return "unknown" if entry is None else str(entry)

    return {"regressor": value("regressor"), "bfm": value("bfm")}


def served_models(url: str = "localhost", protocol: str = "http") -> dict[str, str]:
    """{"regressor": mb05|mb1, "bfm": exact|approximate} as served at ``url``."""
    client = Transport(protocol, normalize_url(url, protocol), 1, 60.0)
    try:
        return served_models_from(client)
    finally:
        client.close()


def served_on_gpu_from(protocol: Transport, model: str = STATELESS_ENSEMBLE) -> bool:
    """True when every step that reads the ensemble's IMAGE has GPU instances only
    (KIND_GPU): CUDA shared memory then hands the frame to them without a host copy. A
    model that is not an ensemble is judged by its own instance groups."""
    config = protocol.model_config(model)
    steps = (config.get("ensemble_scheduling") or {}).get("step") or []
    if steps:
        readers = [
            step["model_name"] for step in steps if INPUT in (step.get("input_map") or {}).values()
        ]
        configs = [protocol.model_config(name) for name in readers]
    else:
        configs = [config]
    groups = [group for c in configs for group in (c.get("instance_group") or [])]
    return bool(groups) and all(group.get("kind") == "KIND_GPU" for group in groups)


def served_on_gpu(
    url: str = "localhost", protocol: str = "http", model: str = STATELESS_ENSEMBLE
) -> bool:
    """:func:`served_on_gpu_from` for the server at ``url``; False when it cannot tell."""
    try:
        client = Transport(protocol, normalize_url(url, protocol), 1, 60.0)
    except Exception as exc:  # noqa: BLE001  (the caller falls back to host transport)
        LOG.debug("cannot ask %s for its instance groups: %s", url, exc)
        return False
    try:
        return served_on_gpu_from(client, model)
    except Exception as exc:  # noqa: BLE001
        LOG.debug("cannot read the instance groups of %s at %s: %s", model, url, exc)
        return False
    finally:
        client.close()
