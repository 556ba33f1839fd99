"""A small client of the ``tddfa`` ensemble: one frame in, rendered frame and results out.

:class:`FrameClient` reads the ensemble's metadata and config from the server once and
checks the tensor names and dtypes it relies on before sending anything. It sends frames
over HTTP or gRPC, one at a time (:meth:`FrameClient.infer`) or as a stream with a bounded
number of requests in flight, answered in order (:meth:`FrameClient.infer_stream`). When
the server runs on the same host, frames and results travel through POSIX shared memory
(``shared_memory="system"``) or CUDA shared memory (``shared_memory="cuda"``: frames given
as CUDA arrays are copied device to device, never through the host), one input/output
region pair per in-flight slot, reused from frame to frame, following
create -> register -> use -> unregister -> destroy strictly.

Every call has a deadline (``timeout``, default :data:`DEFAULT_TIMEOUT` s; gRPC calls
included), so a stuck server cannot hang a client. A port that speaks the other protocol
(``--url host:8000`` with gRPC) is recognised at once (:func:`detect_protocol`) and named.
Shared-memory registration carries the server's admin token when this user's server
published one (:mod:`tddfa_tools.admin_token`); without it, frames go over the network.

Errors: :class:`ServerUnavailable` (connection refused, server down: worth retrying),
:class:`InferenceError` (the server refused the request; carries the server's message),
:class:`ModelMismatch` (the served model does not match the contract),
:class:`ProtocolMismatch` (the port speaks another protocol: retrying cannot help).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import os
import secrets
import socket
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from tritonclient.utils import triton_to_np_dtype

from tddfa.contract import RENDER_MODE_PARAMETER, UV_MODE
from tddfa_clients.errors import (
    ClientError,
    InferenceError,
    ModelMismatch,
    ProtocolMismatch,
    ServerUnavailable,
    translate_error,
)
from tddfa_clients.shared_memory import (
    CUDA_ALIGNMENT,
    CUDA_SHM_HINT,
    CudaSharedMemorySlot,
    SharedMemorySlot,
    cuda_shm,
    is_device_array,
    request_ended,
)

__all__ = [  # the errors and constants live beside; importers keep using this module
    "CUDA_ALIGNMENT",
    "CUDA_SHM_HINT",
    "ClientError",
    "FrameClient",
    "FrameResult",
    "InferenceError",
    "ModelMismatch",
    "ProtocolMismatch",
    "ServerUnavailable",
    "served_on_gpu",
    "translate_error",
]

from tddfa_clients.port_probe import (  # noqa: F401  (re-exported)
    DEFAULT_PORTS,
    PROBE_TIMEOUT,
    PROTOCOLS,
    detect_protocol,
    protocol_hint,
)
from tddfa_tools import admin_token

LOG = logging.getLogger(__name__)

INPUT = "IMAGE"
EXPECTED_DTYPES = {
    "IMAGE": "UINT8",
    "RENDERED": "UINT8",
    "FACE_COUNT": "INT32",
    "FACE_BOXES": "FP32",
    "LANDMARKS": "FP32",
    "POSE": "FP32",
    "PARAMS": "FP32",
    "VERTICES": "FP32",
}
DEFAULT_OUTPUTS = ("RENDERED", "FACE_COUNT", "FACE_BOXES", "LANDMARKS", "POSE", "PARAMS")
DEFAULT_TIMEOUT = 120.0  # seconds one call may take (a CPU server under load: ~1 s a frame)
SHARED_MEMORY = ("auto", "system", "cuda", "none")

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

Key = TypeVar("Key")


@dataclasses.dataclass
class FrameResult:
    """The ensemble's answer for one frame, rows beyond ``face_count`` trimmed.

    rendered (H, W, 3) uint8 RGB (None when not requested; a CuPy array when the client
    was made with ``rendered_on_device``); boxes (F, 5) float32
    [x1, y1, x2, y2, score]; landmarks (F, 3, 68) float32 image coordinates; pose (F, 3)
    float32 yaw, pitch, roll degrees; params (F, 62) float32; vertices (F, 3, N) float32
    image space or None.
    """

    rendered: np.ndarray | None
    face_count: int
    boxes: np.ndarray
    landmarks: np.ndarray
    pose: np.ndarray
    params: np.ndarray
    vertices: np.ndarray | None = None
    track_ids: np.ndarray | None = None  # (F,) int32 from the sequence ensemble

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> FrameResult:
        """Build from {tensor name: array without the batch dimension}."""
        count = int(np.asarray(outputs["FACE_COUNT"]).reshape(-1)[0])

        def rows(name: str, tail: tuple[int, ...]) -> np.ndarray:
            if name not in outputs:
                return np.zeros((0, *tail), np.float32)
            return np.ascontiguousarray(outputs[name][:count])

        vertices = outputs.get("VERTICES")
        track_ids = outputs.get("TRACK_IDS")
        return cls(
            rendered=outputs.get("RENDERED"),
            face_count=count,
            boxes=rows("FACE_BOXES", (5,)),
            landmarks=rows("LANDMARKS", (3, 68)),
            pose=rows("POSE", (3,)),
            params=rows("PARAMS", (62,)),
            vertices=None if vertices is None else np.ascontiguousarray(vertices[:count]),
            track_ids=None if track_ids is None else np.asarray(track_ids[:count], np.int32),
        )


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A model input/output as the server declares it (shape without the batch dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def byte_size(self, image_shape: tuple[int, ...]) -> int | None:
        """Bytes of one item; -1 dims are taken from ``image_shape``; None when unknown."""
        dims = list(self.shape)
        if -1 in dims:
            if len(dims) != len(image_shape):
                return None
            dims = [i if d < 0 else d for d, i in zip(dims, image_shape, strict=True)]
        return int(np.prod(dims)) * np.dtype(triton_to_np_dtype(self.datatype)).itemsize


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


def _dims(values: Iterable[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)  # gRPC JSON gives int64 as strings


class _Protocol:
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
        return _dims(output["shape"] if self.name == "http" else output.shape)

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


class FrameClient:
    """Send frames to the ``tddfa`` ensemble and get :class:`FrameResult` back.

    Args:
        url: ``host:port`` of the server (the protocol's default port when omitted).
        protocol: ``http`` or ``grpc``.
        model: the ensemble's name.
        outputs: the output tensors to ask for (FACE_COUNT is always added).
        in_flight: requests kept in flight by :meth:`infer_stream`.
        shared_memory: ``auto`` (system shared memory when the server is local and it
            works), ``system`` (required), ``cuda`` (CUDA shared memory on ``cuda_device``,
            required; frames may then be CUDA arrays: CuPy, torch, any DLPack producer) or
            ``none``.
        timeout: seconds a request may take (gRPC: its deadline; HTTP: the network
            timeout; a stuck server raises ServerUnavailable instead of hanging), and how long
            :meth:`close` waits for requests still in flight before it releases their shared
            memory (a region is never unregistered while a request that uses it may be in the
            server).
        cuda_device: the GPU of the CUDA shared memory regions (``shared_memory="cuda"``),
            numbered as this process sees it.
        server_cuda_device: the same GPU as the server numbers it (default: ``cuda_device``);
            a server started with ``tddfa serve --gpus N`` sees its one GPU as 0.
        rendered_on_device: with ``shared_memory="cuda"``, return RENDERED as a CuPy array
            on ``cuda_device`` (copied device to device out of the region) instead of numpy.
        parameters: request parameters sent with every frame, e.g.
            ``{"render_mode": "depth"}`` (tddfa.contract.RENDER_MODE_PARAMETER).
    """

    def __init__(
        self,
        url: str = "localhost",
        protocol: str = "http",
        model: str = "tddfa",
        outputs: Sequence[str] = DEFAULT_OUTPUTS,
        in_flight: int = 4,
        shared_memory: str = "auto",
        timeout: float = DEFAULT_TIMEOUT,
        cuda_device: int = 0,
        rendered_on_device: bool = False,
        server_cuda_device: int | None = None,
        parameters: Mapping[str, Any] | None = None,
    ):
        if shared_memory not in SHARED_MEMORY:
            raise ValueError(f"shared_memory must be one of {SHARED_MEMORY}, got {shared_memory!r}")
        if rendered_on_device and shared_memory != "cuda":
            raise ValueError("rendered_on_device=True needs shared_memory='cuda'")
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        self.url = normalize_url(url, protocol)
        self.model = model
        self.in_flight = in_flight
        self.timeout = timeout
        self.outputs = tuple(dict.fromkeys(("FACE_COUNT", *outputs)))
        self.parameters = dict(parameters or {})
        try:
            self._protocol = _Protocol(protocol, self.url, in_flight, timeout)
        except Exception as exc:
            raise translate_error(exc) from exc
        self._slots: list[SharedMemorySlot | CudaSharedMemorySlot] = []
        self._cuda = shared_memory == "cuda"
        self.cuda_device = cuda_device
        self.server_cuda_device = server_cuda_device
        self.rendered_on_device = rendered_on_device
        try:
            self._read_model()
            self._use_shm = self._decide_shared_memory(shared_memory)
        except BaseException:
            self._protocol.close()
            raise

    # -- model contract ---------------------------------------------------------------

    def _read_model(self) -> None:
        try:
            metadata = self._protocol.model_metadata(self.model)
            config = self._protocol.model_config(self.model)
        except Exception as exc:
            error = translate_error(exc)
            if isinstance(error, InferenceError):
                raise ModelMismatch(
                    f"model {self.model!r} is not served at {self.url} ({error}); "
                    "build and serve the repository with `tddfa build` and `tddfa serve`"
                ) from exc
            # no Triton answer: maybe the port speaks the other protocol (one quick probe
            # instead of retrying a port that will never answer in this protocol)
            hint = protocol_hint(self.url, self._protocol.name, detect_protocol(self.url))
            if hint is not None:
                raise ProtocolMismatch(hint) from exc
            raise error from exc
        self.config = config
        self.batched = int(config.get("max_batch_size", 0) or 0) > 0
        skip = 1 if self.batched else 0
        specs = {}
        for entry in [*metadata.get("inputs", []), *metadata.get("outputs", [])]:
            shape = _dims(entry.get("shape", []))[skip:]
            specs[entry["name"]] = TensorSpec(entry["name"], entry["datatype"], shape)
        for name in (INPUT, *self.outputs):
            spec = specs.get(name)
            if spec is None:
                raise ModelMismatch(
                    f"model {self.model!r} at {self.url} has no tensor {name}; it declares "
                    f"{sorted(specs)}. Rebuild the repository with `tddfa build`."
                )
            expected = EXPECTED_DTYPES.get(name)
            if expected and spec.datatype != expected:
                raise ModelMismatch(
                    f"{self.model}.{name} is {spec.datatype} on the server, this client needs "
                    f"{expected}. Rebuild the repository with `tddfa build`."
                )
        self.specs = specs

    def served_models(self) -> dict[str, str]:
        """{"regressor": mb05|mb1, "bfm": exact|approximate} from face_aligner's config."""
        return served_models_from(self._protocol)

    # -- shared memory ----------------------------------------------------------------

    def _decide_shared_memory(self, mode: str) -> bool:
        if mode == "cuda":
            return self._setup_cuda_shared_memory()
        if mode == "none" or (mode == "auto" and not is_local(self.url)):
            return False
        try:
            import tritonclient.utils.shared_memory  # noqa: F401  (needs setuptools < 81)
        except ImportError as exc:
            if mode == "system":
                raise ClientError(
                    f"system shared memory unavailable: {exc}. Install 'setuptools<81' "
                    "(tritonclient 2.51 imports pkg_resources)"
                ) from exc
            LOG.warning("shared memory disabled (%s); sending frames over the network", exc)
            return False
        tag = f"{client_shm_prefix()}{uuid.uuid4().hex[:8]}"
        self._slots = [
            SharedMemorySlot(self._protocol, f"{tag}_{i}") for i in range(self.in_flight)
        ]
        # probe once, now: a server in a container may not see our /dev/shm, and a server
        # started by `tddfa serve` registers regions only for holders of its admin token
        try:
            self._slots[0].ensure("input", 4096)
        except Exception as exc:
            self.close_shared_memory()
            reason = translate_error(exc)
            if mode == "auto":
                LOG.warning("shared memory disabled (%s); sending frames over the network", reason)
                return False
            raise ClientError(
                f"the server at {self.url} refused system shared memory ({reason}). Servers "
                "started by `tddfa serve` allow it to the user who started them (admin token "
                f"in {admin_token.token_dir()}, or ${admin_token.ENV_TOKEN}); else send "
                "frames over the network (--no-shm)"
            ) from exc
        return True

    def _setup_cuda_shared_memory(self) -> bool:
        if not is_local(self.url):
            raise ClientError(
                f"CUDA shared memory needs the server on this host, got {self.url}; use "
                "shared_memory='none' for a remote server"
            )
        cuda_shm()
        tag = f"{client_shm_prefix()}cuda_{uuid.uuid4().hex[:8]}"
        self._slots = [
            CudaSharedMemorySlot(
                self._protocol, f"{tag}_{i}", self.cuda_device, self.server_cuda_device
            )
            for i in range(self.in_flight)
        ]
        try:  # fail now, with the server's reason, not on the first frame
            self._slots[0].ensure("input", 4096)
        except Exception as exc:
            self.close_shared_memory()
            error = translate_error(exc)
            raise ClientError(
                f"cannot use CUDA shared memory on device {self.cuda_device} with the server "
                f"at {self.url}: {error}. The server must run on this host with a GPU."
            ) from exc
        return True

    def close_shared_memory(self) -> None:
        """Unregister and destroy every shared memory region once the requests that use
        them have ended (up to ``timeout`` s each); regions are recreated on demand."""
        slots, self._slots = self._slots, []
        for slot in slots:
            slot.close(wait=self.timeout)

    @property
    def uses_shared_memory(self) -> bool:
        return self._use_shm

    @property
    def shared_memory_kind(self) -> str:
        """``cuda``, ``system`` or ``none``: how frames and results travel."""
        if not self._use_shm:
            return "none"
        return "cuda" if self._cuda else "system"

    # -- inference --------------------------------------------------------------------

    def _request(self, image: Any, slot: int) -> tuple[list, list, dict]:
        dtype = str(image.dtype).rsplit(".", 1)[-1]  # numpy/CuPy "uint8", torch "torch.uint8"
        if dtype != "uint8" or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"image must be uint8 (H, W, 3) RGB, got {image.dtype} {tuple(image.shape)}"
            )
        module = self._protocol.module
        if is_device_array(image):
            if not (self._use_shm and self._cuda):
                raise ValueError(
                    "the image is a CUDA array: pass shared_memory='cuda' to send it from the "
                    "GPU, or copy it to the host (numpy) first"
                )
        else:
            image = np.ascontiguousarray(image)
        shape = tuple(int(d) for d in image.shape)
        nbytes = int(np.prod(shape))
        batch = (1,) if self.batched else ()
        tensor = module.InferInput(INPUT, [*batch, *shape], "UINT8")
        outputs = [module.InferRequestedOutput(name) for name in self.outputs]
        placement: dict[str, int] = {}
        if not self._use_shm:
            tensor.set_data_from_numpy(image.reshape(*batch, *image.shape))
            return [tensor], outputs, placement
        region = self._slots[slot]
        if not region.wait_idle(self.timeout):
            raise ServerUnavailable(
                f"a request sent {self.timeout:.0f} s ago through shared memory slot {slot} "
                "has not come back: the server holds a stuck request"
            )
        in_name = region.ensure("input", nbytes)
        region.write(image)  # complete on return: the caller may reuse the image's memory
        tensor.set_shared_memory(in_name, nbytes)
        sizes = {n: self.specs[n].byte_size(shape) for n in self.outputs}
        if self.parameters.get(RENDER_MODE_PARAMETER) == UV_MODE and "RENDERED" in sizes:
            sizes["RENDERED"] = None  # not the frame's size: it comes back in the response
        offset = 0
        align = CUDA_ALIGNMENT if self._cuda else 1  # device views need aligned offsets
        for name, size in sizes.items():
            if size is not None:
                offset = -(-offset // align) * align
                placement[name] = offset
                offset += size
        out_name = region.ensure("output", max(offset, 1))
        for requested in outputs:
            name = requested.name()
            if name in placement:
                requested.set_shared_memory(out_name, sizes[name], offset=placement[name])
        return [tensor], outputs, placement

    def _collect(self, result: Any, slot: int, placement: dict[str, int]) -> FrameResult:
        arrays = {}
        region = self._slots[slot] if placement else None
        for name in self.outputs:
            if name in placement:  # a copy: the region is reused by the next frame
                dtype = triton_to_np_dtype(self.specs[name].datatype)
                shape = self._protocol.output_shape(result, name)
                if isinstance(region, CudaSharedMemorySlot):
                    on_device = self.rendered_on_device and name == "RENDERED"
                    array = region.read(placement[name], dtype, shape, on_device=on_device)
                else:
                    array = region.read(placement[name], dtype, shape)
            else:
                array = result.as_numpy(name)
            if array is None:
                raise InferenceError(f"the server returned no {name} output")
            arrays[name] = array[0] if self.batched else array
        return FrameResult.from_outputs(arrays)

    def infer(self, image: Any) -> FrameResult:
        """Send one (H, W, 3) uint8 RGB frame (numpy; a CUDA array with
        ``shared_memory="cuda"``) and wait for its result."""
        for _, result in self.infer_stream([(None, image)], in_flight=1):
            return result
        raise AssertionError("unreachable")

    def infer_stream(
        self,
        items: Iterable[tuple[Key, Any]],
        in_flight: int | None = None,
        sequence_id: int | None = None,
        sequence_parameters: dict | None = None,
    ) -> Iterator[tuple[Key, FrameResult]]:
        """Send (key, image) pairs with up to ``in_flight`` requests pending; yield
        (key, FrameResult) in input order. The first failed request raises.

        Each image is copied into its request (its shared memory slot, or the request body)
        before the next item is pulled from ``items``: a producer may reuse the image's
        memory for its next item (NVDEC surfaces are reused that way).

        With ``sequence_id`` the frames form one Triton sequence (first frame START, last
        frame END; ``sequence_parameters`` go with every frame): send them to the sequence
        ensemble. gRPC keeps them in order on one stream; HTTP sends one at a time. A
        sequence frame is copied, then sent once the next item shows whether it was the
        last (the copy comes first, so the look-ahead never reads a reused buffer)."""
        limit = min(in_flight or self.in_flight, self.in_flight)
        if sequence_id is not None and self._protocol.name == "http":
            limit = 1  # separate HTTP connections could reorder a sequence's frames
        pending: deque[tuple[Key, int, dict, concurrent.futures.Future]] = deque()
        prepared = 0  # frames copied into their requests
        sent = 0  # frames submitted
        held: tuple | None = None  # a copied sequence frame waiting to learn if it is the last

        def submit(frame: tuple, last: bool) -> None:
            nonlocal sent
            key, slot, inputs, outputs, placement = frame
            sequence = None
            if sequence_id is not None:
                merged = {**self.parameters, **(sequence_parameters or {})} or None
                sequence = SequenceFrame(sequence_id, sent == 0, last, merged)
            try:
                future = self._protocol.submit(
                    self.model, inputs, outputs, sequence, self.parameters or None
                )
            except Exception as exc:
                raise translate_error(exc) from exc
            if self._use_shm:
                self._slots[slot].in_flight = future
            pending.append((key, slot, placement, future))
            sent += 1

        try:
            for key, image in items:
                if held is not None:
                    submit(held, last=False)
                    held = None
                if len(pending) >= limit:
                    yield self._finish(*pending.popleft())
                slot = prepared % limit
                frame = (key, slot, *self._request(image, slot))
                prepared += 1
                if sequence_id is None:
                    submit(frame, last=False)
                else:
                    held = frame
            if held is not None:
                submit(held, last=True)
                held = None
            while pending:
                yield self._finish(*pending.popleft())
        finally:
            # on error/early exit: let outstanding requests end (bounded: `timeout`); a slot
            # whose request is still pending stays marked busy, so close() waits for it
            for _, slot, _, future in pending:
                if request_ended(future, self.timeout) and self._use_shm:
                    self._slots[slot].in_flight = None

    def _finish(
        self, key: Key, slot: int, placement: dict, future: concurrent.futures.Future
    ) -> tuple[Key, FrameResult]:
        try:
            result = future.result()
        except Exception as exc:
            if self._use_shm:
                self._slots[slot].in_flight = None  # the request has ended (with an error)
            raise translate_error(exc) from exc
        try:
            return key, self._collect(result, slot, placement)
        finally:
            if self._use_shm:
                self._slots[slot].in_flight = None

    def submit(self, image: Any, slot: int = 0) -> tuple[int, dict, concurrent.futures.Future]:
        """Start one request in in-flight slot ``slot`` (0 <= slot < in_flight; the slot's
        previous request must have been collected); finish it with :meth:`collect`. For
        callers that schedule requests themselves (tddfa_clients.replicas)."""
        if not 0 <= slot < self.in_flight:
            raise ValueError(f"slot must be in [0, {self.in_flight}), got {slot}")
        inputs, outputs, placement = self._request(image, slot)
        try:
            future = self._protocol.submit(
                self.model, inputs, outputs, parameters=self.parameters or None
            )
        except Exception as exc:
            raise translate_error(exc) from exc
        if self._use_shm:
            self._slots[slot].in_flight = future  # close() waits for it
        return slot, placement, future

    def collect(self, pending: tuple[int, dict, concurrent.futures.Future]) -> FrameResult:
        """Wait for a request started by :meth:`submit`; raises a ClientError on failure."""
        slot, placement, future = pending
        return self._finish(None, slot, placement, future)[1]

    # -- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        """Unregister and destroy the shared memory regions, then close the connection."""
        try:
            self.close_shared_memory()
        finally:
            self._protocol.close()

    def __enter__(self) -> FrameClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def served_models_from(protocol: _Protocol, model: str = "face_aligner") -> dict[str, str]:
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
    client = _Protocol(protocol, normalize_url(url, protocol), 1, 60.0)
    try:
        return served_models_from(client)
    finally:
        client.close()


def served_on_gpu_from(protocol: _Protocol, model: str = "tddfa") -> bool:
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


def served_on_gpu(url: str = "localhost", protocol: str = "http", model: str = "tddfa") -> bool:
    """:func:`served_on_gpu_from` for the server at ``url``; False when it cannot tell."""
    try:
        client = _Protocol(protocol, normalize_url(url, protocol), 1, 60.0)
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
