"""The faces a batch draws, as the renderer takes them, and their selection.

:class:`MeshFaces` (mesh modes: model-space meshes + their model->image affine) and
:class:`OverlayFaces` (landmarks / pose: image-space landmarks) name, per face, the frame
it belongs to; :class:`Rendered` is what a batch gives back. The helpers keep the faces of
the frames a mode applies to, copy them to the host (the fallback path) and build the
overlays' triangles. numpy or CuPy alike; frame and slot indices are host arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from tddfa.render.overlays import Overlay, landmark_dots, pose_box_lines
from tddfa.xp import get_xp, to_numpy


@dataclasses.dataclass(frozen=True)
class MeshFaces:
    """Faces drawn as meshes.

    Attributes:
        frame: (F,) host int, the frame of each face.
        slot: (F,) host int, its face slot (the uv mode's column in the UV atlas).
        vertices: (F, 3, N) float32 model-space vertices (xp); with ``compact``, a list of F
            host arrays (3, n).
        transforms: (F, 3, 4) model->image affine (xp).
        shift_z: subtract each face's minimum image z (the pipeline's convention).
        coarse: (F,) host bool, draw the face with the coarse mesh (small faces; needs
            ``assets.lod_triangles``), or None (all full).
        compact: (F,) host bool (CPU renderer), or None: ``vertices[i]`` of a coarse face
            holds the coarse mesh's M vertices in its order, then vertices that only
            complete the face's bounding box to that of all N (tddfa.render.coarse_decode).
    """

    frame: np.ndarray
    slot: np.ndarray
    vertices: Any
    transforms: Any
    shift_z: bool = True
    coarse: np.ndarray | None = None
    compact: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class OverlayFaces:
    """Faces drawn as 2D overlays (landmarks and pose modes).

    Attributes:
        frame: (F,) host int.
        landmarks: (F, 3, 68) image-space landmarks (xp).
        transforms: (F, 3, 4) model->image affine (xp; the pose box's rotation).
    """

    frame: np.ndarray
    landmarks: Any
    transforms: Any


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A batch's results: ``frames`` (B, H, W, 3) uint8 (xp) holds every frame drawn over;
    ``own`` maps the frames whose mode returns an image of its own (uv) to that image."""

    frames: Any
    own: dict[int, Any]


def check_settings(triangles: Any, alpha: float, uv_size: int, assets: Any) -> np.ndarray:
    """A renderer's settings, checked (ValueError naming the problem): (3, T) non-negative
    integer triangles (returned as an array), alpha in [0, 1], uv_size in 2..4096, render
    assets (tddfa.render.assets.RenderAssets or None) covering every vertex."""
    triangles = np.asarray(triangles)
    if triangles.ndim != 2 or triangles.shape[0] != 3 or triangles.shape[1] < 1:
        raise ValueError(f"triangles must be (3, T) int, got {triangles.shape}")
    if not np.issubdtype(triangles.dtype, np.integer) or triangles.min() < 0:
        raise ValueError("triangles must hold non-negative integer vertex indices")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 2 <= int(uv_size) <= 4096:
        raise ValueError(f"uv_size must be in 2..4096, got {uv_size}")
    if assets is not None and assets.num_vertices <= int(triangles.max()):
        raise ValueError(
            f"render assets cover {assets.num_vertices} vertices, the triangles use "
            f"{int(triangles.max()) + 1}"
        )
    return triangles


def one_frame_meshes(image: Any, vertices: Any, count: int) -> MeshFaces:
    """The faces of a renderer's ``render(image, vertices, count)``: the first ``count`` of
    (K, 3, N) image-space meshes over one (H, W, 3) frame, identity transforms, no z shift
    (ValueError for a bad count or frame)."""
    count = int(count)
    if image.ndim != 3:
        validate_images(image, 1)
    if vertices.ndim != 3 or not 0 <= count <= vertices.shape[0]:
        raise ValueError(
            f"count must be in 0..{vertices.shape[0] if vertices.ndim == 3 else 0} "
            f"(rows of vertices {tuple(vertices.shape)}), got {count}"
        )
    xp = get_xp(vertices)
    identity = xp.zeros((count, 3, 4), xp.float32)
    identity[:, [0, 1, 2], [0, 1, 2]] = 1.0
    return MeshFaces(
        frame=np.zeros(count, np.int64),
        slot=np.arange(count),
        vertices=vertices[:count],
        transforms=identity,
        shift_z=False,
    )


def validate_images(images: Any, batch: int) -> None:
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        shape = tuple(images.shape)[1:] if images.ndim == 4 else tuple(images.shape)
        raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {images.dtype} {shape}")
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got {tuple(images.shape[1:])}")
    if images.shape[0] != batch:
        raise ValueError(f"{images.shape[0]} frames but {batch} render modes")


def validate_meshes(meshes: MeshFaces, batch: int, slots: int, max_index: int) -> None:
    """ValueError naming the problem when ``meshes`` do not fit a batch of ``batch`` frames
    with ``slots`` face slots and triangles up to vertex ``max_index``."""
    vertices = meshes.vertices
    faces = len(meshes.frame)
    if meshes.compact is not None:
        _validate_compact(meshes, faces, max_index)
    elif vertices.ndim != 3 or vertices.shape[1] != 3 or vertices.shape[2] <= max_index:
        raise ValueError(
            f"vertices must be (K, 3, N) with N > {max_index} (the largest triangle "
            f"index), got {tuple(vertices.shape)}"
        )
    if len(vertices) != faces or meshes.transforms.shape != (faces, 3, 4):
        raise ValueError(
            f"{faces} mesh faces need vertices ({faces}, 3, N) and transforms "
            f"({faces}, 3, 4), got {len(vertices)} faces' vertices and transforms "
            f"{tuple(meshes.transforms.shape)}"
        )
    if faces and (meshes.frame.min() < 0 or meshes.frame.max() >= batch):
        raise ValueError(f"mesh faces name frames outside 0..{batch - 1}")
    if faces and (meshes.slot.min() < 0 or meshes.slot.max() >= slots):
        raise ValueError(f"mesh faces name slots outside 0..{slots - 1}")


def _validate_compact(meshes: MeshFaces, faces: int, max_index: int) -> None:
    compact = np.asarray(meshes.compact, bool)
    coarse = np.zeros(faces, bool) if meshes.coarse is None else np.asarray(meshes.coarse)
    if compact.shape != (faces,) or (compact & ~coarse).any():
        raise ValueError("compact marks coarse faces only, one flag a face")
    for face, rows in enumerate(meshes.vertices):
        if rows.ndim != 2 or rows.shape[0] != 3 or not (compact[face] or rows.shape[1] > max_index):
            raise ValueError(
                f"vertices[{face}] must be (3, N) with N > {max_index}, or compact, got "
                f"{tuple(rows.shape)}"
            )


def subset_meshes(meshes: MeshFaces, keep: list[bool]) -> MeshFaces | None:
    if all(keep):
        return meshes
    if not any(keep):
        return None
    xp = get_xp(meshes.vertices)
    index = np.flatnonzero(keep)
    device_index = xp.asarray(index)
    return dataclasses.replace(
        meshes,
        frame=meshes.frame[index],
        slot=meshes.slot[index],
        vertices=meshes.vertices[device_index],
        transforms=meshes.transforms[device_index],
        coarse=None if meshes.coarse is None else meshes.coarse[index],
    )


def subset_overlays(overlays: OverlayFaces, keep: list[bool]) -> OverlayFaces | None:
    if all(keep):
        return overlays
    if not any(keep):
        return None
    xp = get_xp(overlays.landmarks)
    index = np.flatnonzero(keep)
    device_index = xp.asarray(index)
    return OverlayFaces(
        overlays.frame[index], overlays.landmarks[device_index], overlays.transforms[device_index]
    )


def overlay_geometry(overlays: OverlayFaces, modes: Sequence[str]) -> Overlay:
    """One :class:`Overlay` for all overlay faces: dots or a pose box per face, padded to
    one vertex count (the padding repeats a vertex: degenerate triangles draw nothing)."""
    xp = get_xp(overlays.landmarks)
    is_pose = np.array([modes[f] == "pose" for f in overlays.frame])
    parts = {
        "dots": landmark_dots(overlays.landmarks) if not is_pose.all() else None,
        "box": pose_box_lines(overlays.transforms, overlays.landmarks) if is_pose.any() else None,
    }
    count = max(p.position.shape[1] for p in parts.values() if p is not None)

    def pad(array: Any) -> Any:
        extra = count - array.shape[1]
        if extra == 0:
            return array
        return xp.concatenate([array, xp.repeat(array[:, -1:], extra, axis=1)], axis=1)

    if parts["box"] is None:
        return parts["dots"]
    if parts["dots"] is None:
        return parts["box"]
    dots, box = parts["dots"], parts["box"]
    pose = xp.asarray(is_pose)
    return Overlay(
        xp.where(pose[:, None, None], pad(box.position), pad(dots.position)),
        xp.where(pose[:, None, None], pad(box.disc), pad(dots.disc)),
        xp.where(pose[:, None], box.color, dots.color),
    )


def meshes_on_host(meshes: MeshFaces | None) -> MeshFaces | None:
    if meshes is None:
        return None
    return dataclasses.replace(
        meshes, vertices=to_numpy(meshes.vertices), transforms=to_numpy(meshes.transforms)
    )


def overlays_on_host(overlays: OverlayFaces | None) -> OverlayFaces | None:
    if overlays is None:
        return None
    return OverlayFaces(overlays.frame, to_numpy(overlays.landmarks), to_numpy(overlays.transforms))
