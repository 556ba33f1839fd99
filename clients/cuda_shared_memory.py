"""CUDA shared memory for the FrameClient: regions made with CuPy (or tritonclient's
helper where CuPy is missing), registered under the server's GPU number, written and read
on the device so that an NVDEC frame never visits the host. The slot life cycle is
:class:`tddfa_clients.shared_memory.RegionSlot`'s.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from typing import Any

import numpy as np

from tddfa_clients.errors import ClientError
from tddfa_clients.optional import installed
from tddfa_clients.shared_memory import RegionSlot, quiet_pkg_resources

LOG = logging.getLogger(__name__)

CUDA_ALIGNMENT = 256  # bytes: output offsets in a CUDA region (cudaMalloc's alignment)
CUDA_SHM_HINT = (
    "CUDA shared memory needs tritonclient[cuda] with cuda-python 12.x (tritonclient 2.51 "
    "imports cuda.cudart, which cuda-python 13 removed): pip install 'cuda-python>=12,<13' "
    "'setuptools<81'"
)


def have_cupy() -> bool:
    return installed("cupy")


def cuda_shm() -> Any:
    """How CUDA regions are made: ``None`` for CuPy (preferred: works with any cuda-python;
    tritonclient 2.51's helper imports cuda.cudart, gone from cuda-python 13, the GPU
    machines' version), else tritonclient.utils.cuda_shared_memory; ClientError naming the
    fix when neither is usable."""
    if have_cupy():
        return None
    try:
        with quiet_pkg_resources():
            import tritonclient.utils.cuda_shared_memory as cudashm
    except (ImportError, RuntimeError) as exc:
        raise ClientError(
            f"CUDA shared memory unavailable ({exc}): install CuPy (pip install "
            f"cupy-cuda12x or cupy-cuda13x), or {CUDA_SHM_HINT}"
        ) from exc
    return cudashm


@dataclasses.dataclass
class CupyRegion:
    """A CUDA shared memory region made with CuPy: its own cudaMalloc (CUDA IPC shares
    whole allocations, so never a pool block) and the IPC handle Triton opens."""

    memory: Any  # cupy.cuda.Memory; None once destroyed
    size: int
    device_id: int

    @classmethod
    def create(cls, size: int, device_id: int) -> CupyRegion:
        import cupy

        with cupy.cuda.Device(device_id):
            return cls(cupy.cuda.Memory(size), size, device_id)

    def raw_handle(self) -> bytes:
        """The serialized cudaIpcMemHandle in base64, as register_cuda_shared_memory wants."""
        import cupy

        with cupy.cuda.Device(self.device_id):
            return base64.b64encode(cupy.cuda.runtime.ipcGetMemHandle(self.memory.ptr))

    def array(self) -> Any:
        """The whole region as a flat CuPy uint8 array (a view)."""
        import cupy

        pointer = cupy.cuda.MemoryPointer(self.memory, 0)
        return cupy.ndarray((self.size,), cupy.uint8, pointer)

    def destroy(self) -> None:
        self.memory = None  # CuPy frees the allocation with its last reference


def is_device_array(image: Any) -> bool:
    """True for arrays that live on a CUDA device (DLPack device type 2: kDLCUDA)."""
    if isinstance(image, np.ndarray) or not hasattr(image, "__dlpack_device__"):
        return False
    return int(image.__dlpack_device__()[0]) == 2


def as_cupy(image: Any) -> Any:
    """A CuPy view of a CUDA image from any producer (CuPy, torch, PyNvVideoCodec frames):
    DLPack first (CuPy passes its current stream, so the producer's work is ordered before
    ours), the CUDA array interface for producers whose ``__dlpack__`` takes no stream."""
    import cupy

    if isinstance(image, cupy.ndarray):
        return image
    try:
        return cupy.from_dlpack(image)
    except (TypeError, BufferError):
        return cupy.asarray(image)


class CudaSharedMemorySlot(RegionSlot):
    """One CUDA input region and one CUDA output region on ``device_id``: the CUDA
    counterpart of :class:`SharedMemorySlot`.

    ``write`` fills the input region from a numpy array (one host-to-device copy) or from a
    CUDA array (one device-to-device copy, no host memory), and returns only once the copy
    is complete: a video decoder that reuses its output surfaces (PyNvVideoCodec's
    SimpleDecoder does) may overwrite the source as soon as the next frame is pulled.
    ``read`` copies one output out of the region, to the host or (``on_device``) into a new
    CuPy array on the device.
    """

    def __init__(
        self, protocol: Any, tag: str, device_id: int, server_device_id: int | None = None
    ):
        super().__init__(protocol, tag)
        self.device_id = device_id  # as this process numbers its GPUs
        # as the server numbers the same GPU (a server started with --gpus N calls it 0)
        self.server_device_id = device_id if server_device_id is None else server_device_id
        self._copied: Any = None  # the event the input copy is waited for with

    def _create(self, name: str, size: int) -> Any:
        cudashm = cuda_shm()
        if cudashm is None:
            handle = CupyRegion.create(size, self.device_id)
            raw = handle.raw_handle()
        else:
            handle = cudashm.create_shared_memory_region(name, size, self.device_id)
            raw = cudashm.get_raw_handle(handle)
        try:
            self._protocol.shared_memory(
                "register_cuda_shared_memory", name, raw, self.server_device_id, size
            )
        except BaseException:
            self._forget(name)
            self._destroy(handle)
            raise
        return handle

    def _unregister(self, name: str) -> None:
        self._protocol.shared_memory("unregister_cuda_shared_memory", name)

    def _destroy(self, handle: Any) -> None:
        if isinstance(handle, CupyRegion):
            handle.destroy()
        else:
            cuda_shm().destroy_shared_memory_region(handle)

    def write(self, image: Any) -> None:
        """Copy a (H, W, 3) uint8 image (numpy, or a CUDA array) into "input"; the copy is
        complete when this returns."""
        if is_device_array(image):
            self._write_device(image)
            return
        handle = self.handle("input")
        if isinstance(handle, CupyRegion):
            import cupy

            flat = np.ascontiguousarray(image).reshape(-1).view(np.uint8)
            with cupy.cuda.Device(self.device_id):
                handle.array()[: flat.size].set(flat)  # synchronous host-to-device copy
        else:
            cuda_shm().set_shared_memory_region(handle, [image])

    def _region_array(self, role: str) -> Any:
        """The whole ``role`` region as a flat CuPy uint8 array (a view, no copy)."""
        import cupy

        _, handle, size = self.regions[role]
        if isinstance(handle, CupyRegion):
            return handle.array()
        with cupy.cuda.Device(self.device_id):
            return cupy.from_dlpack(cuda_shm().as_shared_memory_tensor(handle, "UINT8", [size]))

    def _write_device(self, image: Any) -> None:
        """Device-to-device copy of a CUDA image (contiguous or pitched, this GPU or
        another) into "input", complete when this returns.

        The copy runs on CuPy's current stream of this GPU (after the caller's earlier work
        there; a DLPack producer orders its own work before it) and is waited for through an
        event with blocking synchronisation (the thread sleeps instead of spinning).
        """
        import cupy

        with cupy.cuda.Device(self.device_id):
            if self._copied is None:
                self._copied = cupy.cuda.Event(block=True, disable_timing=True)
            stream = cupy.cuda.get_current_stream()
            source = as_cupy(image)
            if source.dtype != np.uint8:
                raise ValueError(f"a CUDA image must be uint8, got {source.dtype}")
            target = self._region_array("input")[: source.size]
            if source.flags.c_contiguous:
                target.data.copy_from_device_async(source.data, source.nbytes, stream)
            elif source.device.id == self.device_id:
                target.reshape(source.shape)[...] = source  # strided (pitched) rows
            else:
                with cupy.cuda.Device(source.device.id):
                    packed = cupy.ascontiguousarray(source)
                    cupy.cuda.get_current_stream().synchronize()
                target.data.copy_from_device_async(packed.data, packed.nbytes, stream)
            self._copied.record(stream)
            self._copied.synchronize()

    def view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> Any:
        """A CuPy view (no copy) of ``shape`` ``dtype`` values at byte ``offset`` of
        "output", valid until the slot's next request."""
        import cupy

        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        with cupy.cuda.Device(self.device_id):
            return self._region_array("output")[offset : offset + nbytes].view(dtype).reshape(shape)

    def read(
        self, offset: int, dtype: np.dtype, shape: tuple[int, ...], on_device: bool = False
    ) -> Any:
        """Copy ``shape`` ``dtype`` values at byte ``offset`` of "output" out of the region.

        Returns numpy (one device-to-host copy; CuPy when importable, else tritonclient's
        whole-region read) or, with ``on_device``, a CuPy array (device-to-device copy).
        """
        handle = self.handle("output")
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not have_cupy():
            if on_device:
                raise ClientError("device outputs need CuPy: pip install cupy-cuda12x")
            size = self.regions["output"][2]
            whole = cuda_shm().get_contents_as_numpy(handle, np.uint8, [size])
            return whole[offset : offset + nbytes].view(dtype).reshape(shape).copy()
        import cupy

        with cupy.cuda.Device(self.device_id):
            view = self._region_array("output")[offset : offset + nbytes].view(dtype)
            view = view.reshape(shape)
            return view.copy() if on_device else cupy.asnumpy(view)
