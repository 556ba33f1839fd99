"""Per-face numbers the mesh shader needs, computed on the device that holds the faces.

:func:`face_bounds` maps each face's model-space mesh into the image and keeps its
bounding box (all that is ever taken from the mapped mesh: the vertices themselves are
mapped again in the vertex shader). :func:`instance_array` packs one row of
``INSTANCE_FLOATS`` float32 per face: the rows of T, the lighting frame, z shift / extent,
the mode, where the face's vertices are, and its tile's offset and clip rectangle.
numpy or CuPy alike; on a GPU nothing here waits for the device, and the rows are one
kernel (:data:`_ROWS`, a thread per face) instead of some twenty launch-bound CuPy ops.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from tddfa.render.modes import MODE_IDS, OWN_IMAGE_MODES
from tddfa.render.shaders import INSTANCE_FLOATS
from tddfa.xp import get_xp


@dataclasses.dataclass(frozen=True)
class FaceBounds:
    """Image-space bounding boxes of F faces (xp arrays).

    Attributes:
        low: (F, 3) float32 minimum x, y, z of each face, z before the shift.
        high: (F, 3) float32 maximum x, y, z.
    """

    low: Any
    high: Any


def bounds_on_host(bounds: FaceBounds) -> FaceBounds:
    """Device bounds as numpy, in one transfer (the layout of the faces' regions needs them)."""
    xp = get_xp(bounds.low)
    both = xp.asnumpy(xp.concatenate([bounds.low, bounds.high], axis=1))
    return FaceBounds(both[:, :3], both[:, 3:])


def face_bounds(vertices: Any, transforms: Any) -> FaceBounds:
    """(F, 3, N) model-space vertices, (F, 3, 4) model->image transforms -> bounds."""
    xp = get_xp(vertices)
    transforms = xp.asarray(transforms, dtype=xp.float32)
    image = transforms[:, :, :3] @ vertices + transforms[:, :, 3:]
    return FaceBounds(image.min(axis=2), image.max(axis=2))


# instance_array's maths per face, float32 as the xp code (tests compile it for the host too)
_ROWS = r"""
extern "C" __global__ void instance_rows(
        const float* transforms, const float* low, const float* high, const float* host,
        int shift_z, int faces, float* out) {
    // transforms (F, 12), low/high (F, 3), host (F, 14) -> out (F, 32)
    int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= faces) return;
    const float* lo = low + 3 * f;
    const float* hi = high + 3 * f;
    float* row = out + 32 * f;
    float shift = shift_z ? lo[2] : 0.f;
    float extent = 0.f;
    for (int i = 0; i < 3; ++i) {
        row[12 + i] = (lo[i] + hi[i]) / 2.f;
        float side = hi[i] - lo[i];
        extent = i == 0 || side > extent ? side : extent;
    }
    row[14] -= shift;
    extent = extent > 1e-6f ? extent : 1e-6f;
    for (int i = 0; i < 12; ++i) row[i] = transforms[12 * f + i];
    row[15] = 2.f / extent;
    row[16] = shift;
    row[17] = hi[2] - lo[2];
    for (int i = 0; i < 14; ++i) row[18 + i] = host[14 * f + i];
}
"""


def rows_source() -> str:
    """The CUDA source of the instance-row kernel."""
    return _ROWS


@functools.lru_cache(maxsize=1)
def _rows_kernel():
    import cupy

    return cupy.RawKernel(_ROWS, "instance_rows")


def instance_array(
    transforms: Any,
    bounds: FaceBounds,
    shift_z: bool,
    host_columns: np.ndarray,
) -> Any:
    """Pack the per-face instance rows.

    Args:
        transforms: (F, 3, 4) model->image affine (xp).
        bounds: the faces' :class:`FaceBounds` (xp, same device).
        shift_z: subtract each face's minimum z (the VERTICES convention) or not.
        host_columns: (F, 14) float32 host columns known from the layout: mode, face index
            (where its vertices are in the vertex buffers), tile offset x, y, UV atlas
            origin x, y, clip rectangle (4) and sampling rectangle (4).

    Returns:
        (F, INSTANCE_FLOATS) float32 contiguous (xp).
    """
    xp = get_xp(transforms)
    faces = transforms.shape[0]
    if xp is not np:
        return _device_rows(xp, transforms, bounds, shift_z, host_columns)
    low, high = bounds.low.astype(xp.float32), bounds.high.astype(xp.float32)
    shift = low[:, 2] if shift_z else xp.zeros((faces,), xp.float32)
    # Sim3DR's normalisation: centre of the bounding box, longest side 2 (after the shift)
    centre = (low + high) / 2
    centre[:, 2] -= shift
    extent = xp.maximum((high - low).max(axis=1), 1e-6)
    host = xp.asarray(np.ascontiguousarray(host_columns, dtype=np.float32))
    out = xp.empty((faces, INSTANCE_FLOATS), xp.float32)
    out[:, 0:12] = xp.asarray(transforms, dtype=xp.float32).reshape(faces, 12)
    out[:, 12:15] = centre
    out[:, 15] = 2.0 / extent
    out[:, 16] = shift
    out[:, 17] = high[:, 2] - low[:, 2]
    out[:, 18:32] = host
    return out


def _device_rows(cp, transforms, bounds: FaceBounds, shift_z: bool, host_columns) -> Any:
    faces = transforms.shape[0]
    out = cp.empty((faces, INSTANCE_FLOATS), cp.float32)
    if faces:
        args = [
            cp.ascontiguousarray(cp.asarray(a, dtype=cp.float32))
            for a in (transforms, bounds.low, bounds.high, host_columns)
        ]
        blocks = (faces + 127) // 128
        _rows_kernel()((blocks,), (128,), (*args, np.int32(bool(shift_z)), np.int32(faces), out))
    return out


def instance_order(groups: np.ndarray) -> np.ndarray:
    """Row order of the faces: by draw group (0 filled, 1 textured, 2 wireframe: each is
    drawn with its own program or state), stable within a group."""
    return np.argsort(np.asarray(groups), kind="stable")


def mesh_columns(
    meshes, index: np.ndarray, plan, modes, frame_size: tuple[int, int], uv_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The host columns of :func:`instance_array` for faces ``index`` of ``meshes`` in
    ``plan`` (tddfa.render.layout.Pass), and each one's draw group (0 filled, 1 textured,
    2 wireframe)."""
    height, width = frame_size
    host = np.zeros((len(index), 14), np.float32)
    group = np.zeros(len(index), np.int64)
    for row, i in enumerate(index):
        frame = int(meshes.frame[i])
        mode = modes[frame]
        tile = plan.tiles.get(frame)
        host[row, 0] = MODE_IDS[mode]
        host[row, 1] = row  # its vertices' place in this pass's buffers
        host[row, 2:4] = tile.offset if tile else (0, 0)
        if mode in OWN_IMAGE_MODES:
            atlas = plan.atlases[frame]
            slot = int(meshes.slot[i])
            host[row, 4:6] = (atlas.origin[0] + slot * uv_size, atlas.origin[1])
            host[row, 6:10] = atlas.slot_clip(slot, uv_size)
        else:
            host[row, 6:10] = tile.clip
        host[row, 10:14] = (0, 0, width - 1, height - 1)  # frame sampling stays in the frame
        group[row] = 2 if mode == "wireframe" else 1 if mode == "texture" else 0
    return host, group
