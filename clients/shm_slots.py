"""A client's in-flight slots of shared memory and what goes where in them.

:func:`open_slots` decides whether frames travel through shared memory (system or CUDA) and
makes one :class:`~tddfa_clients.shared_memory.RegionSlot` per request in flight, probed
once so that a server that cannot or may not map them is known before the first frame.
:func:`output_layout` places the requested outputs in a slot's output region.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from tddfa.contract import RENDER_MODE_PARAMETER, UV_MODE
from tddfa.gpu_scheduling import use_blocking_sync
from tddfa_clients import stale_regions
from tddfa_clients.cuda_shared_memory import CUDA_ALIGNMENT, CudaSharedMemorySlot, cuda_shm
from tddfa_clients.errors import ClientError, translate_error
from tddfa_clients.model_contract import ModelContract
from tddfa_clients.shared_memory import RegionSlot, SharedMemorySlot, system_shm
from tddfa_clients.transport import client_shm_prefix, is_local
from tddfa_tools.serve import admin_token

LOG = logging.getLogger(__name__)

SHARED_MEMORY = ("auto", "system", "cuda", "none")
PROBE_BYTES = 4096


class CudaSharedMemoryRefused(ClientError):
    """The server did not register a CUDA region (not on this host's GPU, no admin token)."""


def open_slots(
    transport: Any,
    url: str,
    mode: str,
    count: int,
    cuda_device: int = 0,
    server_cuda_device: int | None = None,
) -> list[RegionSlot]:
    """``count`` slots for ``mode`` (see :data:`SHARED_MEMORY`), or [] when frames go in
    the request body (``none``, or ``auto`` for a remote server or one that refuses).
    ``system`` and ``cuda`` are required: refusal raises ClientError naming the fix."""
    if mode not in SHARED_MEMORY:
        raise ValueError(f"shared_memory must be one of {SHARED_MEMORY}, got {mode!r}")
    if mode == "none" or (mode == "auto" and not is_local(url)):
        return []
    if is_local(url):  # regions that clients killed before cleaning up left here
        stale_regions.reap(transport)
    if mode == "cuda":
        return _cuda_slots(transport, url, count, cuda_device, server_cuda_device)
    try:
        system_shm()  # needs setuptools < 81 (pkg_resources)
    except ImportError as exc:
        if mode == "system":
            raise ClientError(
                f"system shared memory unavailable: {exc}. Install 'setuptools<81' "
                "(tritonclient 2.51 imports pkg_resources)"
            ) from exc
        LOG.warning("shared memory disabled (%s); sending frames over the network", exc)
        return []
    tag = f"{client_shm_prefix()}{uuid.uuid4().hex[:8]}"
    slots: list[RegionSlot] = [SharedMemorySlot(transport, f"{tag}_{i}") for i in range(count)]
    # probe once, now: a server in a container may not see our /dev/shm, and a server
    # started by `tddfa serve` registers regions only for holders of its admin token
    try:
        slots[0].ensure("input", PROBE_BYTES)
    except BaseException as exc:  # Ctrl-C or SIGTERM here too: the probe region goes
        close_slots(slots, 0.0)
        if not isinstance(exc, Exception):
            raise
        reason = translate_error(exc)
        if mode == "auto":
            LOG.warning("shared memory disabled (%s); sending frames over the network", reason)
            return []
        raise ClientError(
            f"the server at {url} refused system shared memory ({reason}). Servers "
            "started by `tddfa serve` allow it to the user who started them (admin token "
            f"in {admin_token.token_dir()}, or ${admin_token.ENV_TOKEN}); else send "
            "frames over the network (--no-shm)"
        ) from exc
    return slots


def _cuda_slots(
    transport: Any, url: str, count: int, cuda_device: int, server_cuda_device: int | None
) -> list[RegionSlot]:
    if not is_local(url):
        raise ClientError(
            f"CUDA shared memory needs the server on this host, got {url}; use "
            "shared_memory='none' for a remote server"
        )
    cuda_shm()
    use_blocking_sync(cuda_device)  # copies into the regions are waited for without spinning
    tag = f"{client_shm_prefix()}cuda_{uuid.uuid4().hex[:8]}"
    slots: list[RegionSlot] = [
        CudaSharedMemorySlot(transport, f"{tag}_{i}", cuda_device, server_cuda_device)
        for i in range(count)
    ]
    try:  # fail now, with the server's reason, not on the first frame
        slots[0].ensure("input", PROBE_BYTES)
    except BaseException as exc:  # Ctrl-C or SIGTERM here too: the probe region goes
        close_slots(slots, 0.0)
        if not isinstance(exc, Exception):
            raise
        raise CudaSharedMemoryRefused(
            f"cannot use CUDA shared memory on device {cuda_device} with the server "
            f"at {url}: {translate_error(exc)}. The server must run on this host with a GPU."
        ) from exc
    return slots


def close_slots(slots: Iterable[RegionSlot], wait: float | None) -> None:
    """Unregister and destroy every region once the requests that use them have ended (up
    to ``wait`` s each)."""
    for slot in slots:
        slot.close(wait=wait)


def output_layout(
    contract: ModelContract,
    outputs: Iterable[str],
    image_shape: tuple[int, ...],
    cuda: bool,
    parameters: Mapping[str, Any],
    in_response: Iterable[str] = (),
) -> tuple[dict[str, tuple[int, int]], int]:
    """({output: (byte offset, bytes)}, region bytes) for the outputs that go into a slot's
    output region; the others (``in_response``, or of unknown size) come back in the
    response. CUDA offsets are aligned so that every output can be viewed on the device."""
    skip = set(in_response)
    if parameters.get(RENDER_MODE_PARAMETER) == UV_MODE:
        skip.add("RENDERED")  # not the frame's size: it comes back in the response
    layout: dict[str, tuple[int, int]] = {}
    offset = 0
    align = CUDA_ALIGNMENT if cuda else 1
    for name in outputs:
        size = None if name in skip else contract.specs[name].byte_size(image_shape)
        if size is not None:
            offset = -(-offset // align) * align
            layout[name] = (offset, size)
            offset += size
    return layout, max(offset, 1)
