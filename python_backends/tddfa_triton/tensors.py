"""Tensors between Triton's Python backend and the steps' arrays, without copies.

Inputs become numpy on CPU instances and CuPy on GPU instances (DLPack; a host input at a
GPU instance is copied to its device once, a tensor from another GPU peer to peer); outputs
go back as Triton tensors the same way. numpy 2 takes DLPack both ways because the stub's
pybind11 misreads its dtypes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from tddfa.xp import get_xp
from tddfa_triton.diagnostics import CrossDeviceNotice

# pybind11 < 2.12 inside the Python-backend stub (Triton <= 24.10) misreads numpy 2 dtypes:
# as_numpy() and Tensor(name, ndarray) return garbage there, DLPack does not.
_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2
_DLPACK_CPU = 1  # DLPack's kDLCPU


class _DLPackView:
    """A Triton tensor for ``from_dlpack`` of numpy 2 / CuPy: their protocol calls pass
    keywords (``max_version``, ``stream``) that the stub's ``__dlpack__`` does not take."""

    def __init__(self, tensor, device: tuple[int, int]):
        self._tensor, self._device = tensor, device

    def __dlpack__(self, **_):
        return self._tensor.to_dlpack()  # Triton's data is complete: no stream to order

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._device


def _host_array(tensor) -> np.ndarray:
    """A CPU tensor as numpy, zero-copy."""
    if _NUMPY_2:
        return np.from_dlpack(_DLPackView(tensor, (_DLPACK_CPU, 0)))
    return tensor.as_numpy()


def _device_array(tensor):
    """A GPU tensor as CuPy, zero-copy, on the device that holds it."""
    import cupy

    kind, index = tensor.__dlpack_device__()  # (kDLCUDA, device id)
    return cupy.from_dlpack(_DLPackView(tensor, (int(kind), int(index))))


_CROSS_DEVICE = CrossDeviceNotice()


def to_array(tensor, device: int | None = None, name: str = "") -> Any:
    """A Triton tensor as an array: numpy on CPU instances; CuPy on GPU instance ``device``.

    GPU tensors on the instance's GPU stay where they are (DLPack, zero-copy). A host tensor
    reaching a GPU instance (a client that sent the frame without CUDA shared memory) is
    copied to the instance's device once, here, so every step after it sees device memory
    only. A tensor on ANOTHER GPU (Triton hands a step the upstream step's buffer on the GPU
    that produced it, or a client's CUDA shared memory region, wherever it lives) is copied
    peer to peer onto this instance's GPU (:func:`_peer_copy`), never used in place.
    """
    if device is None:
        if tensor.is_cpu():
            return _host_array(tensor)
        import cupy

        return cupy.asnumpy(_device_array(tensor))
    import cupy  # GPU instances only

    with cupy.cuda.Device(device):
        if tensor.is_cpu():
            return cupy.asarray(_host_array(tensor))
        array = _device_array(tensor)
        if array.device.id == device:
            return array
        if _CROSS_DEVICE.first(name, array.device.id):
            pb_utils.Logger.log_warn(
                f"input {name or '?'} arrived on cuda:{array.device.id} at an instance on "
                f"cuda:{device}: copied peer to peer (the request crossed GPUs; one server "
                "per GPU avoids it: docs/multi_gpu.md). Said once per input and GPU."
            )
        return _peer_copy(array, device)


def _peer_copy(array, device: int):
    """A copy of CuPy ``array`` (on another GPU) on ``device``, complete on return.

    cudaMemcpyPeerAsync needs no peer access to be enabled (the driver stages the copy
    through the host when P2P is off or refused, e.g. under MPS), unlike CuPy's own
    cross-device copy, which enables peer access first. The wait makes the copy independent
    of how long Triton keeps the source (another process's memory, mapped by CUDA IPC);
    it costs one synchronisation per crossing, and crossings only happen in the layout
    docs/multi_gpu.md advises against.
    """
    import cupy

    if not array.flags.c_contiguous:
        with cupy.cuda.Device(array.device.id):
            array = cupy.ascontiguousarray(array)
    with cupy.cuda.Device(device):
        out = cupy.empty(array.shape, array.dtype)
        if array.nbytes:
            cupy.cuda.runtime.memcpyPeerAsync(
                out.data.ptr,
                device,
                array.data.ptr,
                array.device.id,
                array.nbytes,
                cupy.cuda.get_current_stream().ptr,
            )
            cupy.cuda.get_current_stream().synchronize()
    return out


# The stub renames a DLPack capsule it consumed "used_dlpack"; the DLPack spec says
# "used_dltensor", and numpy's capsule destructor checks for exactly that: for any other name
# it reports an unraisable error, a Python traceback in the server log for every host tensor
# (11 per tracked frame on the H200). PbTensor frees the data through the DLPack deleter, so
# marking the capsule as the spec does only silences the destructor.
_capsule_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_is_valid.argtypes = (ctypes.py_object, ctypes.c_char_p)
_capsule_set_name = ctypes.pythonapi.PyCapsule_SetName
_capsule_set_name.argtypes = (ctypes.py_object, ctypes.c_char_p)
_USED_CAPSULE = b"used_dltensor"  # the capsule keeps a pointer to these bytes: module lifetime


def host_tensor_from_dlpack(make_tensor: Callable[[str, Any], Any], name: str, array: np.ndarray):
    """``make_tensor(name, capsule)`` (``pb_utils.Tensor.from_dlpack``) for a numpy array,
    the consumed capsule then marked used as DLPack specifies (see _USED_CAPSULE)."""
    capsule = array.__dlpack__()
    tensor = make_tensor(name, capsule)
    if not _capsule_is_valid(capsule, b"dltensor"):  # consumed: the data is the tensor's now
        _capsule_set_name(capsule, _USED_CAPSULE)
    return tensor


def to_tensor(name: str, array, dtype) -> Any:
    if isinstance(array, list):  # one array per frame (their shapes differ within a batch)
        array = get_xp(array[0]).stack(array)
    xp = get_xp(array)
    array = xp.ascontiguousarray(array.astype(dtype, copy=False))
    if xp is np and not _NUMPY_2:
        return pb_utils.Tensor(name, array)
    if xp is np:  # numpy 2 goes through DLPack too (see _NUMPY_2)
        return host_tensor_from_dlpack(pb_utils.Tensor.from_dlpack, name, array)
    return pb_utils.Tensor.from_dlpack(name, array)  # a CuPy array stays on the device
