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

Every call has a deadline (``timeout``, default :data:`DEFAULT_TIMEOUT` s), so a stuck
server cannot hang a client; a port that speaks the other protocol is named at once. The
model contract: tddfa_clients.model_contract; the slots: tddfa_clients.shm_slots. Many videos
from one process over gRPC streams: tddfa_clients.video_streams.

Errors: :class:`ServerUnavailable` (connection refused, server down: worth retrying),
:class:`InferenceError` (the server refused the request; carries the server's message),
:class:`ModelMismatch` (the served model does not match the contract),
:class:`ProtocolMismatch` (the port speaks another protocol: retrying cannot help).
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from tddfa.contract import DEFAULT_OUTPUTS
from tddfa_clients.cuda_shared_memory import (
    CUDA_ALIGNMENT,
    CUDA_SHM_HINT,
    CudaSharedMemorySlot,
    is_device_array,
)
from tddfa_clients.errors import (
    ClientError,
    InferenceError,
    ModelMismatch,
    ProtocolMismatch,
    ServerUnavailable,
    translate_error,
)
from tddfa_clients.model_contract import (
    EXPECTED_DTYPES,
    INPUT,
    FrameResult,
    TensorSpec,
    read_contract,
)
from tddfa_clients.shared_memory import request_ended
from tddfa_clients.shm_slots import SHARED_MEMORY, close_slots, open_slots, output_layout

__all__ = [  # the errors and constants live beside; importers keep using this module
    "CUDA_ALIGNMENT",
    "CUDA_SHM_HINT",
    "EXPECTED_DTYPES",
    "SHARED_MEMORY",
    "ClientError",
    "FrameClient",
    "FrameResult",
    "InferenceError",
    "ModelMismatch",
    "ProtocolMismatch",
    "ServerUnavailable",
    "TensorSpec",
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
    end_sequence,
    is_local,
    new_sequence_id,
    normalize_url,
    served_models,
    served_models_from,
    served_on_gpu,
    served_on_gpu_from,
)

LOG = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0  # seconds one call may take (a CPU server under load: ~1 s a frame)

Key = TypeVar("Key")


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
        self._slots: list = []
        self._cuda = shared_memory == "cuda"
        self.cuda_device = cuda_device
        self.server_cuda_device = server_cuda_device
        self.rendered_on_device = rendered_on_device
        try:
            contract = read_contract(self._protocol, model, self.url, self.outputs)
            self._contract = contract
            self.config, self.batched, self.specs = (
                contract.config,
                contract.batched,
                contract.specs,
            )
            self._slots = open_slots(
                self._protocol, self.url, shared_memory, in_flight, cuda_device, server_cuda_device
            )
            self._use_shm = bool(self._slots)
        except BaseException:
            self._protocol.close()
            raise

    def served_models(self) -> dict[str, str]:
        """{"regressor": mb05|mb1, "bfm": exact|approximate} from face_aligner's config."""
        return served_models_from(self._protocol)

    # -- shared memory ----------------------------------------------------------------

    def close_shared_memory(self) -> None:
        """Unregister and destroy every shared memory region once the requests that use
        them have ended (up to ``timeout`` s each); regions are recreated on demand."""
        slots, self._slots = self._slots, []
        close_slots(slots, self.timeout)

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
        layout, total = output_layout(
            self._contract, self.outputs, shape, self._cuda, self.parameters
        )
        out_name = region.ensure("output", total)
        for requested in outputs:
            name = requested.name()
            if name in layout:
                offset, size = layout[name]
                requested.set_shared_memory(out_name, size, offset=offset)
                placement[name] = offset
        return [tensor], outputs, placement

    def _collect(self, result: Any, slot: int, placement: dict[str, int]) -> FrameResult:
        arrays = {}
        region = self._slots[slot] if placement else None
        for name in self.outputs:
            if name in placement:  # a copy: the region is reused by the next frame
                dtype = self._contract.dtype(name)
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
            if sequence_id is not None and sent and not ended:  # stopped early: end it now
                end_sequence(self._protocol, self.model, sequence_id, self.batched, self.timeout)

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
