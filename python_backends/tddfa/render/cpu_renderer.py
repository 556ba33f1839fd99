"""CpuRenderer: the faces drawn on the CPU by a compiled rasteriser, the renderer of CPU builds.

The same inputs, modes and pictures as :class:`tddfa.render.MeshRenderer` (OpenGL, which
remains the GPU renderer and the reference the tests compare with), without a GL context:
per frame, only the rectangle around its faces is drawn. A face's vertices go through the
vertex stage (:mod:`tddfa.render.shading`: one pass writes the records the rasteriser
reads, for the vertices its mesh uses), its triangles into a z-buffered region
(:mod:`tddfa.render.raster`), and the region is blended over a copy of the frame, every
pixel once (:mod:`tddfa.render.cpu_blend`); uv maps interpolate a raster made once
(:mod:`tddfa.render.cpu_atlas`). Each calling thread keeps its buffers (region, records)
from frame to frame: a fresh megabyte costs its page faults on every frame. The kernels
release the GIL: a frame's region is drawn and blended in horizontal bands by ``threads``
threads (each band sets up every triangle again, a tenth of the work per band, for about
half the time a frame on two cores); a server scales over frames with more model
instances.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tddfa.contract import DEFAULT_RENDER_MODE
from tddfa.render import cpu_atlas, cpu_blend, raster, shading
from tddfa.render.assets import RenderAssets
from tddfa.render.faces import (
    MeshFaces,
    OverlayFaces,
    Rendered,
    check_settings,
    one_frame_meshes,
    overlay_geometry,
    subset_overlays,
    validate_images,
    validate_meshes,
)
from tddfa.render.lighting import Lighting
from tddfa.render.modes import (
    BLENDED_MODES,
    MESH_MODES,
    OVERLAY_MODES,
    OWN_IMAGE_MODES,
    check_available,
    parse_mode,
)
from tddfa.xp import get_xp

# what the vertex stage computes per mode (wireframe: nothing, its lines carry their colour)
_VERTEX_VALUES = {
    "shaded": shading.LIT,
    "normals": shading.NORMALS,
    "depth": shading.DEPTH,
    "pncc": shading.TABLE,
    "texture": shading.TEXELS,
    "uv": shading.FRAME,
    "wireframe": shading.NONE,
}
BAND_ROWS = 48  # the fewest rows a band is given: smaller regions take fewer threads


def _edges(triangles: np.ndarray) -> np.ndarray:
    """(T, 3) triangles -> (E, 2) int32 unique undirected edges (one sort of int64 keys:
    np.unique over rows takes 20x longer, at every model load)."""
    pairs = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    pairs = np.sort(pairs, axis=1).astype(np.int64)
    keys = np.unique(pairs[:, 0] << 32 | pairs[:, 1])
    return np.ascontiguousarray(np.stack([keys >> 32, keys & 0xFFFFFFFF], axis=1), dtype=np.int32)


class _Mesh:
    """One triangulation over the (M,) int32 vertices it uses (a coarse mesh uses a third
    of them: the vertex stage skips the rest): its (T, 3) triangles and (E, 2) edges as
    int32 rows of those vertices (rows of the vertex records)."""

    def __init__(self, triangles: np.ndarray) -> None:
        triangles = np.ascontiguousarray(np.asarray(triangles).T, dtype=np.int32)
        self.vertices = np.unique(triangles).astype(np.int32)
        self.rows = np.arange(len(self.vertices), dtype=np.int32)  # of compact vertices
        self.triangles = np.searchsorted(self.vertices, triangles).astype(np.int32)
        self.edges = _edges(self.triangles)


class _Buffers:
    """One thread's buffers, grown as needed and kept: the region's depth, colour and
    written flags, vertex records per face of a frame, and the normals' scratch."""

    def __init__(self, vertices: int) -> None:
        self.vertices = vertices
        self.depth = np.empty(0, np.float32)
        self.colour = np.empty(0, np.float32)
        self.written = np.empty(0, np.uint8)
        self.records: list[np.ndarray] = []
        self.sums = np.empty((vertices, 3), np.float64)

    def region(self, region: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Depth (-inf: nothing drawn), colour and written-flag buffers of a region."""
        height, width = int(region[3] - region[1]), int(region[2] - region[0])
        pixels = height * width
        if self.depth.size < pixels:
            self.depth = np.empty(pixels, np.float32)
            self.colour = np.empty(3 * pixels, np.float32)
            self.written = np.empty(pixels, np.uint8)
        depth = self.depth[:pixels].reshape(height, width)
        written = self.written[:pixels].reshape(height, width)
        depth.fill(-np.inf)
        written.fill(0)
        return depth, self.colour[: 3 * pixels].reshape(height, width, 3), written

    def face_records(self, face: int, rows: int) -> np.ndarray:
        """The (rows, 8) vertex records of a frame's ``face``-th face."""
        while len(self.records) <= face:
            self.records.append(np.empty((self.vertices, 8), np.float64))
        return self.records[face][:rows]


class CpuRenderer:
    """Draws faces over numpy frames on the CPU (see the module doc). Its shared state is
    read-only after construction and each calling thread draws in buffers of its own:
    calls may come from several threads at once.

    Args: as :class:`tddfa.render.MeshRenderer` (``device`` is always ``"cpu"``):
        triangles (3, T), alpha, lighting, assets, texture, uv_size, wire_color; and
        threads: threads a frame is drawn with (0: one per core, at most 4).
    """

    device = "cpu"
    uses_interop = False

    def __init__(
        self,
        triangles: np.ndarray,
        alpha: float = 0.6,
        lighting: Lighting | None = None,
        assets: RenderAssets | None = None,
        texture: np.ndarray | None = None,
        uv_size: int = 256,
        wire_color: tuple[float, float, float] = (1.0, 1.0, 1.0),
        threads: int = 1,
    ) -> None:
        triangles = check_settings(triangles, alpha, uv_size, assets)
        if threads < 0:
            raise ValueError(f"threads must be 0 (one per core) or more, got {threads}")
        self.threads = int(threads) or min(os.cpu_count() or 1, 4)
        self._pool = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None
        self.alpha = float(alpha)
        self.uv_size = int(uv_size)
        self.assets = assets
        self._max_index = int(triangles.max())
        self._alpha8 = int(np.floor(self.alpha * 255 + 0.5))  # the GL target's 8-bit weight
        self._light = (lighting or Lighting()).packed()
        # the lines' colour as the GL target stores it (float32, then 8 bits)
        wire = np.asarray(wire_color, np.float32).astype(np.float64)
        self._wire8 = np.floor(np.clip(wire, 0.0, 1.0) * 255.0 + 0.5).astype(np.int64)
        self._full = _Mesh(triangles)
        lod = assets.lod_triangles if assets is not None else None
        self._coarse = _Mesh(lod) if lod is not None else None
        self.has_coarse_mesh = self._coarse is not None
        # the vertex ids a coarse face draws: the caller may decode only those
        # (MeshFaces.compact, tddfa.render.coarse_decode)
        self.coarse_vertices = self._coarse.vertices if self._coarse is not None else None
        vertices = self._max_index + 1
        self._ncc = np.zeros((3, vertices), np.float32)
        self._uv = np.zeros((vertices, 2), np.float32)
        if assets is not None:
            self._ncc[:] = assets.ncc[:, :vertices]
            self._uv[:] = assets.uv[:vertices]
        texture = texture if texture is not None else (assets.texture if assets else None)
        self.has_texture = texture is not None
        texture = texture if texture is not None else np.zeros((1, 1, 3), np.uint8)
        self._texture_size = np.array(texture.shape[1::-1], np.float64)
        self._texels = cpu_blend.texture_layout(texture)
        self._atlas_records, self._atlas_winner = (
            self._atlas() if assets is not None else (None, None)
        )
        self._local = threading.local()  # each calling thread's _Buffers
        self._closed = False
        self._warm_up()

    # -- public API (as MeshRenderer) -----------------------------------------------------
    def check_modes(self, modes: Sequence[str]) -> None:
        """Raise ValueError for a mode this renderer cannot draw (missing assets)."""
        check_available(modes, self.assets is not None, self.has_texture)

    def draw(
        self,
        images: Any,
        modes: Sequence[str],
        meshes: MeshFaces | None = None,
        overlays: OverlayFaces | None = None,
        slots: int = 1,
    ) -> Rendered:
        """Draw a batch: (B, H, W, 3) uint8 numpy frames, B mode names, the faces of the
        mesh and overlay modes, K ``slots`` (a uv map is (S, K * S, 3)). As
        :meth:`tddfa.render.MeshRenderer.draw`."""
        if self._closed:
            raise ValueError("the renderer is closed")
        modes = [parse_mode(m) for m in modes]
        validate_images(images, len(modes))
        if get_xp(images) is not np:
            raise ValueError(
                "the CPU renderer draws numpy frames: pass numpy, or build the renderer "
                "on device='cuda:N' for CuPy frames"
            )
        self.check_modes(modes)
        if meshes is not None:
            validate_meshes(meshes, len(modes), slots, self._max_index)
            self._check_compact(meshes, modes)
        frames = np.array(images, copy=True, order="C")
        own: dict[int, Any] = {}
        geometry = None
        if overlays is not None:
            overlays = subset_overlays(
                overlays, [modes[f] in OVERLAY_MODES for f in overlays.frame]
            )
            geometry = overlay_geometry(overlays, modes) if overlays is not None else None
        mesh_faces = _by_frame(meshes, len(modes))
        overlay_faces = _by_frame(overlays, len(modes))
        for frame, mode in enumerate(modes):
            if mode in OWN_IMAGE_MODES:
                own[frame] = self._uv_map(images[frame], meshes, mesh_faces[frame], slots)
            elif mode in MESH_MODES and mesh_faces[frame]:
                self._draw_meshes(frames[frame], mode, meshes, mesh_faces[frame])
            elif mode in OVERLAY_MODES and overlay_faces[frame]:
                self._draw_overlays(frames[frame], geometry, overlay_faces[frame])
        return Rendered(frames, own)

    def render(self, image: Any, vertices: Any, count: int, mode: str = DEFAULT_RENDER_MODE) -> Any:
        """Draw the first ``count`` image-space meshes (K, 3, N) over one (H, W, 3) frame,
        no transform, no z shift; as :meth:`tddfa.render.MeshRenderer.render`."""
        meshes = one_frame_meshes(image, vertices, count)
        result = self.draw(image[None], [mode], meshes, slots=max(int(count), 1))
        return result.own[0] if 0 in result.own else result.frames[0]

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> CpuRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- drawing --------------------------------------------------------------------------
    def _buffers(self) -> _Buffers:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = _Buffers(len(self._full.vertices))
        return buffers

    def _check_compact(self, meshes: MeshFaces, modes: Sequence[str]) -> None:
        if meshes.compact is None or not np.any(meshes.compact):
            return
        if self._coarse is None:
            raise ValueError("compact faces need the coarse mesh (render assets' lod_triangles)")
        if any(modes[meshes.frame[f]] in OWN_IMAGE_MODES for f in np.flatnonzero(meshes.compact)):
            raise ValueError("uv maps draw the full mesh: their faces cannot be compact")
        drawn = len(self._coarse.vertices)
        for face in np.flatnonzero(meshes.compact):
            if meshes.vertices[face].shape[1] < drawn:
                raise ValueError(
                    f"compact vertices[{face}] must hold the coarse mesh's {drawn} vertices "
                    f"first, got {meshes.vertices[face].shape[1]}"
                )

    def _vertex_stage(self, meshes: MeshFaces, face: int, mode: str, frame, slot: int = 0):
        """(records (M, 8), low (3,), high (3,), mesh) of one face, its records in the
        calling thread's ``slot``-th records buffer."""
        compact = meshes.compact is not None and bool(meshes.compact[face])
        coarse = meshes.coarse is not None and bool(meshes.coarse[face]) and mode != "uv"
        mesh = self._coarse if (coarse or compact) and self._coarse is not None else self._full
        used = mesh.rows if compact else mesh.vertices
        rows = len(mesh.vertices)
        buffers = self._buffers()
        records = buffers.face_records(slot, rows)
        low, high = shading.vertex_records(
            _VERTEX_VALUES[mode],
            np.ascontiguousarray(meshes.vertices[face], dtype=np.float32),
            np.ascontiguousarray(meshes.transforms[face], dtype=np.float32),
            bool(meshes.shift_z), used, mesh.vertices, mesh.triangles, self._light, self._ncc,
            self._uv, self._texture_size, frame, records, buffers.sums[:rows],
        )  # fmt: skip
        return records, low, high, mesh

    def _draw_meshes(self, frame: np.ndarray, mode: str, meshes, faces: list[int]) -> None:
        """Every face of one frame (all in ``mode``) over ``frame``, in place, the region
        in bands drawn by the renderer's threads."""
        stages = [self._vertex_stage(meshes, i, mode, frame, n) for n, i in enumerate(faces)]
        region = _region([(s[1], s[2]) for s in stages], frame.shape)
        if region is None:
            return
        faces_ = [(s[0], s[3]) for s in stages]
        depth, colour, written = self._buffers().region(region)
        bands = _bands(region, min(self.threads, max(1, int(region[3] - region[1]) // BAND_ROWS)))
        jobs = [
            self._pool.submit(self._draw_band, frame, mode, faces_, band, region, depth, colour, written)
            for band in bands[1:]
        ]  # fmt: skip
        self._draw_band(frame, mode, faces_, bands[0], region, depth, colour, written)
        for job in jobs:
            job.result()

    def _draw_band(
        self, frame, mode: str, faces: list, band, region, depth, colour, written
    ) -> None:
        """The faces' pixels in one band (rows of ``region``) of the frame, blended over it;
        ``faces``: (records, mesh) each; ``depth``, ``colour``, ``written``: the region's
        buffers, of which the band draws its rows."""
        rows = slice(int(band[1] - region[1]), int(band[3] - region[1]))
        depth, colour, written = depth[rows], colour[rows], written[rows]
        if mode == "wireframe":
            # visible edges only: every face's surface depth first (pushed back a
            # little), then the edges where they are not behind it, in one colour
            for records, mesh in faces:
                raster.fill_depth(records, mesh.triangles, band, depth)
            for records, mesh in faces:
                raster.draw_lines(records, mesh.edges, band, depth, written)
        else:
            for records, mesh in faces:
                raster.fill_triangles(records, mesh.triangles, band, depth, colour, written)
        alpha8 = self._alpha8 if mode in BLENDED_MODES else 255
        if mode == "texture":
            cpu_blend.composite_texture(frame, band, colour, written, alpha8, self._texels)
        elif mode == "wireframe":
            cpu_blend.composite_colour(frame, band, self._wire8, written, alpha8)
        else:
            cpu_blend.composite(frame, band, colour, written, alpha8)

    def _atlas(self) -> tuple[np.ndarray, np.ndarray]:
        """The uv map's vertex records (the full mesh at (u (S - 1), (1 - v) (S - 1)), depth
        0) and the triangle drawn at each of its pixels (cpu_atlas.cover_triangles)."""
        side = self.uv_size - 1.0
        used = self._full.vertices
        records = np.zeros((len(used), 8), np.float64)
        records[:, 0] = (self._uv[:, 0] * side)[used]
        records[:, 1] = ((1.0 - self._uv[:, 1]) * side)[used]
        records[:, 3:5] = np.floor(records[:, 0:2] * raster.SUBPIXEL + 0.5)
        return records, cpu_atlas.cover_triangles(records, self._full.triangles, self.uv_size)

    def _uv_map(self, image: np.ndarray, meshes, faces: list[int], slots: int) -> np.ndarray:
        """The frame's (S, K * S, 3) uv atlas: each face's map in its slot's square, the
        first triangle drawn at a pixel wins; black where nothing is drawn."""
        side = self.uv_size
        atlas = np.zeros((side, slots * side, 3), np.uint8)
        image = np.ascontiguousarray(image)
        for i in faces:
            values, _, _, mesh = self._vertex_stage(meshes, i, "uv", image)
            cpu_atlas.paint_atlas(
                self._atlas_records, mesh.triangles, self._atlas_winner, values, atlas,
                int(meshes.slot[i]) * side,
            )  # fmt: skip
        return atlas

    def _draw_overlays(self, frame: np.ndarray, geometry, faces: list[int]) -> None:
        """Landmark dots or pose boxes of one frame's faces over it, opaque."""
        low, high = (np.asarray(b, np.float64) for b in geometry.bounds())
        region = _region([(low[i], high[i]) for i in faces], frame.shape)
        if region is None:
            return
        _, colour, written = self._buffers().region(region)
        for i in faces:
            raster.fill_discs(
                np.ascontiguousarray(geometry.position[i], dtype=np.float64),
                np.ascontiguousarray(geometry.disc[i], dtype=np.float64),
                np.asarray(geometry.color[i], np.float64),
                region, colour, written,
            )  # fmt: skip
        cpu_blend.composite(frame, region, colour, written, 255)

    def _warm_up(self) -> None:
        """Compile (or load from numba's cache) every kernel now, not on the first frame."""
        n = self._max_index + 1
        corners = np.zeros((3, n), np.float32)
        corners[:2, : min(n, 3)] = np.array([[1, 6, 1], [1, 1, 6]], np.float32)[:, : min(n, 3)]
        image = np.zeros((8, 8, 3), np.uint8)
        meshes = one_frame_meshes(image, corners[None], 1)
        for mode in ("shaded", "texture", "wireframe"):
            self._draw_meshes(image.copy(), mode, meshes, [0])
        if self._atlas_records is not None:
            self._uv_map(image, meshes, [0], 1)
        landmarks = np.full((1, 3, 68), 4.0, np.float32)
        transform = np.eye(3, 4, dtype=np.float32)[None]
        overlays = OverlayFaces(np.zeros(1, np.int64), landmarks, transform)
        self.draw(image[None], ["landmarks"], overlays=overlays)


def _by_frame(faces, frames: int) -> list[list[int]]:
    """Per frame, the indices of its faces in ``faces`` (MeshFaces / OverlayFaces / None)."""
    out: list[list[int]] = [[] for _ in range(frames)]
    if faces is not None:
        for i, frame in enumerate(faces.frame):
            out[int(frame)].append(i)
    return out


def _region(boxes, shape) -> np.ndarray | None:
    """The (4,) int64 x0, y0, x1, y1 (exclusive) of the pixel centres inside the union of
    ``boxes`` ((low, high) with x, y first) and the frame; None when empty."""
    height, width = shape[:2]
    kept = [(b[0], b[1]) for b in boxes if b[0][0] <= b[1][0] and b[0][1] <= b[1][1]]
    if not kept:
        return None
    low_x, low_y = min(float(b[0][0]) for b in kept), min(float(b[0][1]) for b in kept)
    high_x, high_y = max(float(b[1][0]) for b in kept), max(float(b[1][1]) for b in kept)
    if not all(math.isfinite(v) for v in (low_x, low_y, high_x, high_y)):
        return None
    x0, y0 = max(0, math.ceil(low_x)), max(0, math.ceil(low_y))
    x1, y1 = min(width, math.floor(high_x) + 1), min(height, math.floor(high_y) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return np.array([x0, y0, x1, y1], np.int64)


def _bands(region: np.ndarray, count: int) -> list[np.ndarray]:
    """``region`` cut into ``count`` horizontal bands of about equal height."""
    if count == 1:
        return [region]
    rows = np.linspace(region[1], region[3], count + 1).round().astype(np.int64)
    return [
        np.array([region[0], top, region[2], bottom], np.int64)
        for top, bottom in zip(rows[:-1], rows[1:], strict=True)
    ]
