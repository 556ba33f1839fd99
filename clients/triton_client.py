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

Errors: :class:`ServerUnavailable` (connection refused, server down: worth retrying),
:class:`InferenceError` (the server refused the request; carries the server's message),
:class:`ModelMismatch` (the served model does not match the contract).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from tddfa.contract import RENDER_MODE_PARAMETER, UV_MODE

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
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
PROTOCOLS = ("http", "grpc")
SHARED_MEMORY = ("auto", "system", "cuda", "none")
CUDA_ALIGNMENT = 256  # bytes: output offsets in a CUDA region (cudaMalloc's alignment)
CUDA_SHM_HINT = (
    "CUDA shared memory needs tritonclient[cuda] with cuda-python 12.x (tritonclient 2.51 "
    "imports cuda.cudart, which cuda-python 13 removed): pip install 'cuda-python>=12,<13' "
    "'setuptools<81'"
)
_TRANSIENT_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "502", "503", "504")
_TRANSIENT_TEXT = (
    "failed to connect",
    "connection refused",
    "socket closed",
    "connect failed",
    "has no available versions",  # the model is (re)loading or the server is stopping
    "is not ready",
    "server is stopping",
)

Key = TypeVar("Key")


class ClientError(RuntimeError):
    """Base of the errors this client raises."""


class ServerUnavailable(ClientError):
    """The server cannot be reached or is not ready; retrying later may succeed."""


class InferenceError(ClientError):
    """The server answered the request with an error (bad input, model failure)."""

    def __init__(self, message: str, status: str = ""):
        super().__init__(message)
        self.status = status


class ModelMismatch(ClientError):
    """The served model's inputs/outputs differ from what this client needs."""


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

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> FrameResult:
        """Build from {tensor name: array without the batch dimension}."""
        count = int(np.asarray(outputs["FACE_COUNT"]).reshape(-1)[0])

        def rows(name: str, tail: tuple[int, ...]) -> np.ndarray:
            if name not in outputs:
                return np.zeros((0, *tail), np.float32)
            return np.ascontiguousarray(outputs[name][:count])

        vertices = outputs.get("VERTICES")
        return cls(
            rendered=outputs.get("RENDERED"),
            face_count=count,
            boxes=rows("FACE_BOXES", (5,)),
            landmarks=rows("LANDMARKS", (3, 68)),
            pose=rows("POSE", (3,)),
            params=rows("PARAMS", (62,)),
            vertices=None if vertices is None else np.ascontiguousarray(vertices[:count]),
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


def is_local(url: str) -> bool:
    """True when ``url`` names this host (shared memory can work)."""
    host = url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0"):
        return True
    return host in (socket.gethostname(), socket.getfqdn())


def translate_error(exc: BaseException) -> ClientError:
    """Map a tritonclient/socket exception to ServerUnavailable or InferenceError."""
    if isinstance(exc, ClientError):
        return exc
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = exc.message() or str(exc)
        text = message.lower()
        if any(s in status for s in _TRANSIENT_STATUS) or any(t in text for t in _TRANSIENT_TEXT):
            return ServerUnavailable(f"server unavailable: {message}")
        return InferenceError(message, status)
    if isinstance(exc, (ConnectionError, socket.timeout, socket.gaierror, OSError)):
        return ServerUnavailable(f"server unavailable: {exc}")
    return ClientError(f"{type(exc).__name__}: {exc}")


def _dims(values: Iterable[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)  # gRPC JSON gives int64 as strings


class _Protocol:
    """The differences between the HTTP and gRPC tritonclient modules."""

    def __init__(self, protocol: str, url: str, concurrency: int, timeout: float):
        self.name = protocol
        if protocol == "http":
            import tritonclient.http as module

            self.client = module.InferenceServerClient(
                url, concurrency=concurrency, connection_timeout=timeout, network_timeout=timeout
            )
        else:
            import tritonclient.grpc as module

            self.client = module.InferenceServerClient(url)
        self.module = module

    def model_config(self, model: str) -> dict:
        if self.name == "http":
            return self.client.get_model_config(model)
        return self.client.get_model_config(model, as_json=True)["config"]

    def model_metadata(self, model: str) -> dict:
        if self.name == "http":
            return self.client.get_model_metadata(model)
        return self.client.get_model_metadata(model, as_json=True)

    def output_shape(self, result: Any, name: str) -> tuple[int, ...]:
        output = result.get_output(name)
        return _dims(output["shape"] if self.name == "http" else output.shape)

    def submit(
        self, model: str, inputs: list, outputs: list, parameters: dict | None = None
    ) -> concurrent.futures.Future:
        """Start one async request (with request ``parameters``, e.g. render_mode); the
        future resolves to the InferResult."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.name == "grpc":

            def done(result: Any, error: Any) -> None:
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

            self.client.async_infer(model, inputs, done, outputs=outputs, parameters=parameters)
            return future
        handle = self.client.async_infer(model, inputs, outputs=outputs, parameters=parameters)
        import gevent

        gevent.sleep(0)  # let the request greenlet send now, not when we first wait
        return _HttpFuture(handle)

    def close(self) -> None:
        self.client.close()


class _HttpFuture(concurrent.futures.Future):
    """Adapter: tritonclient.http InferAsyncRequest behind the Future interface."""

    def __init__(self, handle: Any):
        super().__init__()
        self._handle = handle

    def result(self, timeout: float | None = None) -> Any:
        return self._handle.get_result(timeout=timeout)


class _RegionSlot:
    """One input region and one output region, registered with the server and reused;
    created on first use, grown when a frame needs more, released strictly
    (unregister, then destroy) by :meth:`close`. Subclasses say how regions are made."""

    def __init__(self, protocol: _Protocol, tag: str):
        self._protocol = protocol
        self._tag = tag
        self.regions: dict[str, tuple[str, Any, int]] = {}  # role -> (name, handle, size)

    def _create(self, name: str, size: int) -> Any:
        """Create and register region ``name``; return its handle (destroyed on failure)."""
        raise NotImplementedError

    def _unregister(self, name: str) -> None:
        raise NotImplementedError

    def _destroy(self, handle: Any) -> None:
        raise NotImplementedError

    def ensure(self, role: str, size: int) -> str:
        """The region name for ``role`` holding at least ``size`` bytes."""
        current = self.regions.get(role)
        if current is not None and current[2] >= size:
            return current[0]
        if current is not None:
            self._release(role)
        name = f"{self._tag}_{role}"
        self.regions[role] = (name, self._create(name, size), size)
        return name

    def handle(self, role: str) -> Any:
        return self.regions[role][1]

    def _release(self, role: str) -> None:
        name, handle, _ = self.regions.pop(role)
        try:
            self._unregister(name)
        except Exception as exc:  # the server may be gone; still free our side
            LOG.warning("could not unregister shared memory %s: %s", name, exc)
        finally:
            self._destroy(handle)

    def close(self) -> None:
        for role in list(self.regions):
            self._release(role)


class _SharedMemorySlot(_RegionSlot):
    """System (POSIX) shared memory regions."""

    def _create(self, name: str, size: int) -> Any:
        import tritonclient.utils.shared_memory as shm

        handle = shm.create_shared_memory_region(name, "/" + name, size)
        try:
            self._protocol.client.register_system_shared_memory(name, "/" + name, size)
        except BaseException:
            shm.destroy_shared_memory_region(handle)
            raise
        return handle

    def _unregister(self, name: str) -> None:
        self._protocol.client.unregister_system_shared_memory(name)

    def _destroy(self, handle: Any) -> None:
        import tritonclient.utils.shared_memory as shm

        shm.destroy_shared_memory_region(handle)


def _cuda_shm() -> Any:
    """tritonclient.utils.cuda_shared_memory, or ClientError naming the fix."""
    try:
        import tritonclient.utils.cuda_shared_memory as cudashm
    except (ImportError, RuntimeError) as exc:
        raise ClientError(f"CUDA shared memory unavailable ({exc}). {CUDA_SHM_HINT}") from exc
    return cudashm


def _is_device_array(image: Any) -> bool:
    """True for arrays that live on a CUDA device (DLPack device type 2: kDLCUDA)."""
    if isinstance(image, np.ndarray) or not hasattr(image, "__dlpack_device__"):
        return False
    return int(image.__dlpack_device__()[0]) == 2


class _CudaSharedMemorySlot(_RegionSlot):
    """One CUDA input region and one CUDA output region on ``device_id``, registered with
    the server and reused; the CUDA counterpart of :class:`_SharedMemorySlot`.

    ``write`` fills the input region from a numpy array (one host-to-device copy) or a
    CUDA array through DLPack (one device-to-device copy, no host memory); ``read``
    copies one output out of the region, to the host or (``on_device``) into a new CuPy
    array on the device.
    """

    def __init__(self, protocol: _Protocol, tag: str, device_id: int):
        super().__init__(protocol, tag)
        self.device_id = device_id

    def _create(self, name: str, size: int) -> Any:
        cudashm = _cuda_shm()
        handle = cudashm.create_shared_memory_region(name, size, self.device_id)
        try:
            self._protocol.client.register_cuda_shared_memory(
                name, cudashm.get_raw_handle(handle), self.device_id, size
            )
        except BaseException:
            cudashm.destroy_shared_memory_region(handle)
            raise
        return handle

    def _unregister(self, name: str) -> None:
        self._protocol.client.unregister_cuda_shared_memory(name)

    def _destroy(self, handle: Any) -> None:
        _cuda_shm().destroy_shared_memory_region(handle)

    def write(self, image: Any) -> None:
        """Copy a C-contiguous (H, W, 3) uint8 image (numpy or CUDA array) into "input"."""
        cudashm = _cuda_shm()
        if _is_device_array(image):
            cudashm.set_shared_memory_region_from_dlpack(self.handle("input"), [image])
        else:
            cudashm.set_shared_memory_region(self.handle("input"), [image])

    def read(
        self, offset: int, dtype: np.dtype, shape: tuple[int, ...], on_device: bool = False
    ) -> Any:
        """Copy ``shape`` ``dtype`` values at byte ``offset`` of "output" out of the region.

        Returns numpy (one device-to-host copy; CuPy when importable, else tritonclient's
        whole-region read) or, with ``on_device``, a CuPy array (device-to-device copy).
        """
        cudashm = _cuda_shm()
        handle = self.handle("output")
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        try:
            import cupy
        except ImportError:
            if on_device:
                raise ClientError("device outputs need CuPy: pip install cupy-cuda12x") from None
            whole = cudashm.get_contents_as_numpy(handle, np.uint8, [self.regions["output"][2]])
            return whole[offset : offset + nbytes].view(dtype).reshape(shape).copy()
        size = self.regions["output"][2]
        with cupy.cuda.Device(self.device_id):
            region = cupy.from_dlpack(cudashm.as_shared_memory_tensor(handle, "UINT8", [size]))
            view = region[offset : offset + nbytes].view(dtype).reshape(shape)
            return view.copy() if on_device else cupy.asnumpy(view)


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
        timeout: connection/network timeout in seconds (HTTP).
        cuda_device: the GPU of the CUDA shared memory regions (``shared_memory="cuda"``).
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
        timeout: float = 600.0,
        cuda_device: int = 0,
        rendered_on_device: bool = False,
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
        self.outputs = tuple(dict.fromkeys(("FACE_COUNT", *outputs)))
        self.parameters = dict(parameters or {})
        try:
            self._protocol = _Protocol(protocol, self.url, in_flight, timeout)
        except Exception as exc:
            raise translate_error(exc) from exc
        self._slots: list[_SharedMemorySlot | _CudaSharedMemorySlot] = []
        self._cuda = shared_memory == "cuda"
        self.cuda_device = cuda_device
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
        """{"regressor": mb05|mb1, "bfm": exact|approximate} from landmark_to_vertex's config."""
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
        tag = f"tddfa_client_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._slots = [
            _SharedMemorySlot(self._protocol, f"{tag}_{i}") for i in range(self.in_flight)
        ]
        if mode == "auto":  # probe once: a server in a container may not see our /dev/shm
            try:
                self._slots[0].ensure("input", 4096)
            except Exception as exc:
                self._slots = []
                LOG.warning("shared memory disabled (%s); sending frames over the network", exc)
                return False
        return True

    def _setup_cuda_shared_memory(self) -> bool:
        if not is_local(self.url):
            raise ClientError(
                f"CUDA shared memory needs the server on this host, got {self.url}; use "
                "shared_memory='none' for a remote server"
            )
        _cuda_shm()
        tag = f"tddfa_client_cuda_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._slots = [
            _CudaSharedMemorySlot(self._protocol, f"{tag}_{i}", self.cuda_device)
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
        """Unregister and destroy every shared memory region (they are recreated on demand)."""
        slots, self._slots = self._slots, []
        for slot in slots:
            slot.close()

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
        if _is_device_array(image):
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
        in_name = region.ensure("input", nbytes)
        if isinstance(region, _CudaSharedMemorySlot):
            region.write(image)
        else:
            import tritonclient.utils.shared_memory as shm

            shm.set_shared_memory_region(region.handle("input"), [image])
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
            if name in placement and isinstance(region, _CudaSharedMemorySlot):
                dtype = triton_to_np_dtype(self.specs[name].datatype)
                shape = self._protocol.output_shape(result, name)
                on_device = self.rendered_on_device and name == "RENDERED"
                array = region.read(placement[name], dtype, shape, on_device=on_device)
            elif name in placement:
                import tritonclient.utils.shared_memory as shm

                dtype = triton_to_np_dtype(self.specs[name].datatype)
                shape = self._protocol.output_shape(result, name)
                view = shm.get_contents_as_numpy(
                    self._slots[slot].handle("output"), dtype, shape, offset=placement[name]
                )
                array = np.array(view, copy=True)  # the region is reused by the next frame
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
        self, items: Iterable[tuple[Key, np.ndarray]], in_flight: int | None = None
    ) -> Iterator[tuple[Key, FrameResult]]:
        """Send (key, image) pairs with up to ``in_flight`` requests pending; yield
        (key, FrameResult) in input order. The first failed request raises."""
        limit = min(in_flight or self.in_flight, self.in_flight)
        pending: deque[tuple[Key, int, dict, concurrent.futures.Future]] = deque()
        sent = 0
        try:
            for key, image in items:
                if len(pending) >= limit:
                    yield self._finish(*pending.popleft())
                slot = sent % limit
                inputs, outputs, placement = self._request(image, slot)
                try:
                    future = self._protocol.submit(
                        self.model, inputs, outputs, self.parameters or None
                    )
                except Exception as exc:
                    raise translate_error(exc) from exc
                pending.append((key, slot, placement, future))
                sent += 1
            while pending:
                yield self._finish(*pending.popleft())
        finally:
            for *_, future in pending:  # on error/early exit: let outstanding requests end
                try:
                    future.result()
                except Exception:  # noqa: BLE001  (already failing; only draining here)
                    LOG.debug("dropping the result of an abandoned request", exc_info=True)

    def _finish(
        self, key: Key, slot: int, placement: dict, future: concurrent.futures.Future
    ) -> tuple[Key, FrameResult]:
        try:
            result = future.result()
        except Exception as exc:
            raise translate_error(exc) from exc
        return key, self._collect(result, slot, placement)

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


def served_models_from(protocol: _Protocol, model: str = "landmark_to_vertex") -> dict[str, str]:
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
