"""GPU-only: CuPy arrays <-> the scene's GL objects through CUDA-OpenGL interop (cuda-python).

Per batch, two mappings, each of all its resources in ONE ``cudaGraphicsMapResources``
call (cuda-python takes an address of an array of handles):

1. *in*: the vertex, per-face and overlay buffers (and the background texture when a uv
   face samples the frames in GL: the frames, stacked as the target's tiles, in one 2D
   copy); vertices, normals, per-face rows and overlay vertices are copied device to
   device; unmapped before GL draws;
2. *out*: the drawing (straight colour + weight per pixel, and the UV atlases), read back
   with one 2D copy per rectangle; :mod:`tddfa.render.blend` puts it over the frames.

Mapping orders the copies after earlier GL work on the stream; unmapping orders later GL
work after them. Nothing here waits for the host.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

from tddfa.render.scene import Scene

# isort: split
from OpenGL import GL

logger = logging.getLogger(__name__)


class InteropError(RuntimeError):
    """A CUDA-OpenGL interop call failed (the renderer then falls back to host copies)."""


class CudaInterop:
    """Registrations of one scene's GL objects with CUDA device ``ordinal``."""

    def __init__(self, ordinal: int) -> None:
        import cupy
        from cuda.bindings import runtime

        self.cupy = cupy
        self._rt = runtime
        self._ordinal = ordinal
        self._images: dict[str, Any] = {}  # "background"/"target" -> registered resource
        self._buffers: dict[str, Any] = {}  # "positions"/"normals"/"instances"/"overlay"
        self._versions = (-1, -1)
        self._staging = None  # (rows, width, 4) uint8 RGBA of the frames going in

    def device(self, image: Any) -> Any:
        """Context manager making the renderer's CUDA device current; checks the image is on it."""
        if image.device.id != self._ordinal:
            raise ValueError(
                f"the image is on cuda:{image.device.id} but this renderer draws on "
                f"cuda:{self._ordinal}: copy it there or use a renderer per device"
            )
        return self.cupy.cuda.Device(self._ordinal)

    def _check(self, result: tuple) -> Any:
        err, *values = result
        if err != self._rt.cudaError_t.cudaSuccess:
            _, name = self._rt.cudaGetErrorName(err)
            raise InteropError(f"CUDA-OpenGL interop failed: {name.decode()}")
        return values[0] if len(values) == 1 else values

    def _stream(self) -> Any:
        return self._rt.cudaStream_t(self.cupy.cuda.get_current_stream().ptr)

    # -- registration ---------------------------------------------------------------------
    def register(self, scene: Scene) -> None:
        """(Re-)register the scene's textures/buffers after they were re-created."""
        rt = self._rt
        flags = rt.cudaGraphicsRegisterFlags
        self._check(rt.cudaSetDevice(self._ordinal))  # cuda-python's runtime: same device
        if self._versions[0] != scene.targets_version:
            self._unregister(self._images)
            self._images = {
                "background": self._check(
                    rt.cudaGraphicsGLRegisterImage(
                        scene.background,
                        GL.GL_TEXTURE_2D,
                        flags.cudaGraphicsRegisterFlagsWriteDiscard,
                    )
                ),
                **{
                    name: self._check(
                        rt.cudaGraphicsGLRegisterImage(
                            texture, GL.GL_TEXTURE_2D, flags.cudaGraphicsRegisterFlagsReadOnly
                        )
                    )
                    for name, texture in (("target", scene.target), ("result", scene.result))
                },
            }
        if self._versions[1] != scene.buffers_version:
            self._unregister(self._buffers)
            self._buffers = {
                name: self._check(
                    rt.cudaGraphicsGLRegisterBuffer(
                        buffer, flags.cudaGraphicsRegisterFlagsWriteDiscard
                    )
                )
                for name, buffer in (
                    ("positions", scene.position_buffer),
                    ("normals", scene.normal_buffer),
                    ("instances", scene.instance_buffer),
                    ("overlay", scene.overlay_buffer),
                )
            }
        self._versions = (scene.targets_version, scene.buffers_version)

    def _unregister(self, resources: dict[str, Any]) -> None:
        for resource in resources.values():
            self._check(self._rt.cudaGraphicsUnregisterResource(resource))
        resources.clear()

    def release(self, targets: bool, buffers: bool) -> None:
        """Unregister GL objects about to be re-specified (GL refuses to re-specify a
        texture or buffer registered with CUDA: GL_INVALID_OPERATION)."""
        if targets and self._images:
            self._unregister(self._images)
            self._versions = (-1, self._versions[1])
        if buffers and self._buffers:
            self._unregister(self._buffers)
            self._versions = (self._versions[0], -1)

    # -- one mapping for many resources -----------------------------------------------------
    def _mapping(self, resources: list[Any], stream: Any, unmap: bool = False) -> None:
        handles = (ctypes.c_void_p * len(resources))(*(int(r) for r in resources))
        call = self._rt.cudaGraphicsUnmapResources if unmap else self._rt.cudaGraphicsMapResources
        self._check(call(len(resources), ctypes.addressof(handles), stream))

    # -- copies ---------------------------------------------------------------------------
    def upload(self, images: Any | None, rows: int, buffers: dict[str, Any]) -> None:
        """The (B, H, W, 3) frames (None: not needed in GL) into the background's top
        ``rows`` = B * H rows (they are the target's tiles), and each CuPy array of
        ``buffers`` (name -> array or None) into its GL buffer: one mapping of all of them."""
        cp, rt = self.cupy, self._rt
        names = [n for n, a in buffers.items() if a is not None and a.size]
        frames = [self._images["background"]] if images is not None else []
        resources = [*frames, *(self._buffers[n] for n in names)]
        if not resources:
            return
        stream = self._stream()
        self._mapping(resources, stream)
        try:
            if images is not None:
                self._copy_frames(images, rows, resources[0], stream)
            for name, resource in zip(names, resources[len(frames) :], strict=True):
                data = cp.ascontiguousarray(buffers[name], dtype=cp.float32)
                pointer, _size = self._check(rt.cudaGraphicsResourceGetMappedPointer(resource))
                self._check(
                    rt.cudaMemcpyAsync(
                        pointer, data.data.ptr, data.nbytes,
                        rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream,
                    )
                )  # fmt: skip
        finally:
            self._mapping(resources, stream, unmap=True)

    def _copy_frames(self, images: Any, rows: int, resource: Any, stream: Any) -> None:
        cp, rt = self.cupy, self._rt
        batch, height, width, _ = images.shape
        staging = self._staging
        if staging is None or staging.shape[0] < rows or staging.shape[1] != width:
            staging = self._staging = cp.full((rows, width, 4), 255, dtype=cp.uint8)
        staging = staging[:rows]
        staging[:, :, :3] = images.reshape(batch * height, width, 3)
        array = self._check(rt.cudaGraphicsSubResourceGetMappedArray(resource, 0, 0))
        self._check(
            rt.cudaMemcpy2DToArrayAsync(
                array, 0, 0, staging.data.ptr, width * 4, width * 4, rows,
                rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream,
            )
        )  # fmt: skip

    def read(self, rects: list[tuple]) -> list[Any]:
        """Copy rectangles (x, y, w, h) out of the drawing (straight colour + weight, the
        UV atlases): one (h, w, 4) uint8 CuPy array each; one mapping."""
        cp, rt = self.cupy, self._rt
        stream = self._stream()
        resource = self._images["target"]
        outs = [cp.empty((h, w, 4), dtype=cp.uint8) for (_, _, w, h) in rects]
        self._mapping([resource], stream)
        try:
            array = self._check(rt.cudaGraphicsSubResourceGetMappedArray(resource, 0, 0))
            for (x, y, w, h), rgba in zip(rects, outs, strict=True):
                self._check(
                    rt.cudaMemcpy2DFromArrayAsync(
                        rgba.data.ptr, w * 4, array, x * 4, y, w * 4, h,
                        rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream,
                    )
                )  # fmt: skip
        finally:
            self._mapping([resource], stream, unmap=True)
        return outs

    def close(self) -> None:
        self._unregister(self._images)
        self._unregister(self._buffers)
        self._versions = (-1, -1)
        self._staging = None


def open_interop(ordinal: int | None) -> CudaInterop | None:
    """GPU-only: the interop helper, or None (host path) when CuPy/cuda-python is missing."""
    if ordinal is None:
        return None
    try:
        return CudaInterop(ordinal)
    except ImportError as exc:
        logger.warning("CUDA-OpenGL interop unavailable (%s); frames go through the host", exc)
        return None
