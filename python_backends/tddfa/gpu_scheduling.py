"""How a process's CPU threads wait for its GPU: blocking synchronisation instead of spinning.

CUDA's default scheduling (``CU_CTX_SCHED_AUTO``) makes a thread that waits for the GPU
(a stream or event synchronisation, a device-to-host copy) spin on its core whenever the
process has fewer CUDA contexts than the machine has cores: always, for a Triton stub or a
video client. With sixteen client processes and a dozen stub processes on sixteen cores, the
spinning waits cost more CPU than the work itself (an H100, 16 NVDEC streams: 8.2 ms of CPU
per decoded frame, most of it in the decoder's synchronisation). ``CU_CTX_SCHED_BLOCKING_SYNC``
puts the waiting thread to sleep on an OS primitive until the GPU signals, at the price of a
wake-up of a few microseconds.

:func:`use_blocking_sync` sets it through the CUDA driver API (``libcuda.so.1``, present
wherever an NVIDIA driver is; no toolkit needed): on the primary context of the device
before it is created, and on the current context when it already exists (``cuCtxSetFlags``,
CUDA 12.1 drivers and newer), so it works whether it runs first thing in a process or after
a library made the context. It never raises: a machine without the driver, or a driver too
old, keeps the default, and the returned text says which.
"""

from __future__ import annotations

import ctypes
import functools
import logging

LOG = logging.getLogger(__name__)

# A GPU step's config parameter: "blocking" makes its instances wait this way. Not the
# default for the server: on an H100 under CUDA MPS (benchmarks/RESULTS.md, 2026-12-06) it
# cut the steps' CPU per frame by a quarter in 16-stream video but cost 3 ms of p50 at
# concurrency 1 and 28 % of the throughput at concurrency 128 (a wake-up per wait, several
# waits per request). The video clients always wait this way.
CUDA_WAIT_PARAMETER = "cuda_wait"
SCHED_MASK = 0x07  # CU_CTX_SCHED_MASK
SCHED_BLOCKING_SYNC = 0x04  # CU_CTX_SCHED_BLOCKING_SYNC


@functools.lru_cache(maxsize=1)
def _driver() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


def _call(driver: ctypes.CDLL, name: str, *args: object) -> int:
    """``name(*args)``'s CUresult; -1 when the driver lacks the function."""
    function = getattr(driver, name, None)
    return -1 if function is None else int(function(*args))


def use_blocking_sync(device_id: int = 0) -> str:
    """Make threads of this process that wait for GPU ``device_id`` sleep instead of spin.

    Returns what was done, for the caller's one log line: ``"blocking sync"`` when the
    context's flags now say so, else the reason it kept the default."""
    driver = _driver()
    if driver is None:
        return "default CUDA scheduling (no libcuda.so.1)"
    if _call(driver, "cuInit", 0) != 0:
        return "default CUDA scheduling (cuInit failed)"
    device = ctypes.c_int()
    if _call(driver, "cuDeviceGet", ctypes.byref(device), int(device_id)) != 0:
        return f"default CUDA scheduling (no CUDA device {device_id})"
    flags, active = ctypes.c_uint(), ctypes.c_int()
    _call(driver, "cuDevicePrimaryCtxGetState", device, ctypes.byref(flags), ctypes.byref(active))
    wanted = (flags.value & ~SCHED_MASK) | SCHED_BLOCKING_SYNC
    if not active.value:  # the context is made later, with these flags
        status = _call(driver, "cuDevicePrimaryCtxSetFlags_v2", device, wanted)
        if status != 0:
            return f"default CUDA scheduling (cuDevicePrimaryCtxSetFlags: CUresult {status})"
        return "blocking sync"
    # a library made the context already: change its flags while it is current here
    context = ctypes.c_void_p()
    if _call(driver, "cuDevicePrimaryCtxRetain", ctypes.byref(context), device) != 0:
        return "default CUDA scheduling (cuDevicePrimaryCtxRetain failed)"
    try:
        if _call(driver, "cuCtxPushCurrent_v2", context) != 0:
            return "default CUDA scheduling (cuCtxPushCurrent failed)"
        try:
            status = _call(driver, "cuCtxSetFlags", ctypes.c_uint(wanted))
            got = ctypes.c_uint()
            _call(driver, "cuCtxGetFlags", ctypes.byref(got))
        finally:
            popped = ctypes.c_void_p()
            _call(driver, "cuCtxPopCurrent_v2", ctypes.byref(popped))
    finally:
        _call(driver, "cuDevicePrimaryCtxRelease_v2", device)
    if status != 0 or got.value & SCHED_MASK != SCHED_BLOCKING_SYNC:
        return (
            f"default CUDA scheduling (cuCtxSetFlags needs a CUDA 12.1 driver: CUresult {status})"
        )
    return "blocking sync"
