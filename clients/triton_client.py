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
published one (:mod:`tddfa_tools.serve.admin_token`); without it, frames go over the network.

Errors: :class:`ServerUnavailable` (connection refused, server down: worth retrying),
:class:`InferenceError` (the server refused the request; carries the server's message),
:class:`ModelMismatch` (the served model does not match the contract),
:class:`ProtocolMismatch` (the port speaks another protocol: retrying cannot help).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from tritonclient.utils import triton_to_np_dtype

from tddfa.contract import DEFAULT_OUTPUTS, RENDER_MODE_PARAMETER, UV_MODE
from tddfa_clients import stale_regions
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
    system_shm,
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
from tddfa_clients.transport import (  # noqa: F401  (re-exported)
    GRPC_KEEPALIVE,
    SequenceFrame,
    Transport,
    client_shm_prefix,
    dims,
    is_local,
    new_sequence_id,
    normalize_url,
    served_models,
    served_models_from,
    served_on_gpu,
    served_on_gpu_from,
)
from tddfa_tools.serve import admin_token

LOG = logging.getLogger(__name__)
END_FRAME_SIDE = 64  # pixels: the frame that ends a sequence stopped early
END_WAIT_S = 5.0

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
DEFAULT_TIMEOUT = 120.0  # seconds one call may take (a CPU server under load: ~1 s a frame)
SHARED_MEMORY = ("auto", "system", "cuda", "none")

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
            self._protocol = Transport(protocol, self.url, in_flight, timeout)
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
            shape = dims(entry.get("shape", []))[skip:]
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
        if mode == "none" or (mode == "auto" and not is_local(self.url)):
            return False
        if is_local(self.url):  # regions that clients killed before cleaning up left here
            stale_regions.reap(self._protocol)
        if mode == "cuda":
            return self._setup_cuda_shared_memory()
        try:
            system_shm()  # needs setuptools < 81 (pkg_resources)
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
        ended = False  # the sequence's END went out

        def submit(frame: tuple, last: bool) -> None:
            nonlocal sent, ended
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
            ended = last

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
            if sequence_id is not None and sent and not ended:
                self._end_sequence(sequence_id)

    def _end_sequence(self, sequence_id: int) -> None:
        """End a sequence stopped early (an error, Ctrl-C, SIGTERM) now instead of at the
        server's idle timeout: one black frame with END, over the network, answer ignored."""
        module = self._protocol.module
        black = np.zeros((1, END_FRAME_SIDE, END_FRAME_SIDE, 3) if self.batched else
                         (END_FRAME_SIDE, END_FRAME_SIDE, 3), np.uint8)  # fmt: skip
        tensor = module.InferInput(INPUT, list(black.shape), "UINT8")
        tensor.set_data_from_numpy(black)
        outputs = [module.InferRequestedOutput("FACE_COUNT")]
        try:
            future = self._protocol.submit(
                self.model, [tensor], outputs, SequenceFrame(sequence_id, end=True)
            )
            request_ended(future, min(self.timeout, END_WAIT_S))
        except Exception as exc:  # noqa: BLE001  (already stopping: the idle timeout remains)
            LOG.debug("could not end sequence %d: %s", sequence_id, exc)

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
