"""MeshRenderer: a batch of frames, every face drawn in its frame's mode, in one GL pass.

Inputs are the faces as the pipeline has them: model-space meshes with their model->image
affine (tddfa.params.model_to_image; the shader applies it) for the mesh modes, image-space
landmarks (and the affine, for the pose box) for the overlay modes. A batch goes into one
target (tiles, :mod:`tddfa.render.layout`), is drawn with one multi-draw call per state
(filled faces; wireframe faces; overlays) and read back once:

- host path (numpy, any device; Mesa llvmpipe on CPU): only the regions around the faces
  are uploaded, drawn and read back, then pasted into a copy of the frames;
- CUDA-OpenGL interop path (``device="cuda:N"`` with CuPy arrays): GL draws the faces
  only, into the regions around them (the whole frames, uploaded as one block, only when a
  uv map samples them); the drawing comes out with one device copy and one CUDA kernel
  blends it over the frames' rectangles (tddfa.render.blend); all per-face numbers are
  computed on the GPU, one mapping of all resources each way per batch; no host copy of
  pixels or vertices (the host reads NUM_FACES and the faces' scale, then the faces'
  bounding boxes: two small transfers per batch).

The look of ``shaded`` follows 3DDFA_V2's renders: a white mesh lit by ambient 0.3 +
Lambert diffuse 0.6 + specular 0.1 (exponent 5) per vertex, blended over the frame with
alpha 0.6; the depth test keeps the nearest surface of all faces. docs/render_modes.md
describes every mode.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from tddfa.contract import DEFAULT_RENDER_MODE
from tddfa.gl_context import GLContext  # sets PYOPENGL_PLATFORM=egl first
from tddfa.render import layout as layout_
from tddfa.render.assets import RenderAssets
from tddfa.render.blend import blend_tiles
from tddfa.render.faces import (
    MeshFaces,
    OverlayFaces,
    Rendered,
    check_settings,
    meshes_on_host,
    one_frame_meshes,
    overlay_geometry,
    overlays_on_host,
    subset_meshes,
    subset_overlays,
    validate_images,
    validate_meshes,
)
from tddfa.render.instances import (
    FaceBounds,
    bounds_on_host,
    face_bounds,
    instance_array,
    instance_order,
    mesh_columns,
)
from tddfa.render.interop import InteropError, open_interop
from tddfa.render.lighting import Lighting
from tddfa.render.modes import (
    MESH_MODES,
    OVERLAY_MODES,
    OWN_IMAGE_MODES,
    check_available,
    parse_mode,
)
from tddfa.render.normals import VertexNormals
from tddfa.render.scene import DrawCounts, Scene
from tddfa.render.shaders import INSTANCE_FLOATS, OVERLAY_FLOATS
from tddfa.xp import get_xp

logger = logging.getLogger(__name__)

_NEEDS_NORMALS = frozenset({"shaded", "normals"})


class MeshRenderer:
    """Draws faces over frames with OpenGL in a headless EGL context.

    One instance owns one GL context (one per Triton model instance); calls may come from
    any thread (they are serialised per instance).

    Args:
        triangles: (3, T) int triangle vertex indices (the no-neck BFM: T = 76,073).
        device: ``"cpu"`` (Mesa llvmpipe) or ``"cuda:N"`` (NVIDIA EGL device N; with CuPy
            inputs the frames stay on the GPU).
        alpha: opacity of the blended modes (shaded, texture, wireframe) over the frame.
        lighting: light model; defaults reproduce 3DDFA_V2's look.
        assets: per-vertex ncc code and UV coordinates, default texture (the BFM's modes
            pncc, texture and uv need them).
        texture: the texture mode's image (H, W, 3) uint8, else ``assets.texture``.
        uv_size: side S of a uv mode map.
        wire_color: wireframe edge colour, RGB in [0, 1].
        layout: ``"auto"``: regions around the faces on the host path, whole frames with
            CUDA interop; ``"frames"``: whole frames always (tests compare the two).
    """

    def __init__(
        self,
        triangles: np.ndarray,
        device: str = "cpu",
        alpha: float = 0.6,
        lighting: Lighting | None = None,
        assets: RenderAssets | None = None,
        texture: np.ndarray | None = None,
        uv_size: int = 256,
        wire_color: tuple[float, float, float] = (1.0, 1.0, 1.0),
        layout: str = "auto",
    ) -> None:
        if layout not in ("auto", "frames"):
            raise ValueError(f"layout must be 'auto' or 'frames', got {layout!r}")
        self.layout = layout
        triangles = check_settings(triangles, alpha, uv_size, assets)
        self.device = device
        self.alpha = float(alpha)
        self.uv_size = int(uv_size)
        self.assets = assets
        self._max_index = int(triangles.max())
        self._normals = VertexNormals(triangles)
        lod = assets.lod_triangles if assets is not None else None
        self._coarse_normals = VertexNormals(lod) if lod is not None else self._normals
        texture = texture if texture is not None else (assets.texture if assets else None)
        self.has_texture = texture is not None
        self.has_coarse_mesh = assets is not None and assets.lod_triangles is not None
        self._context = GLContext(device)
        try:
            with self._context.current():
                self._scene = Scene(
                    triangles,
                    lighting or Lighting(),
                    self.alpha,
                    ncc=assets.ncc if assets else None,
                    uv=assets.uv if assets else None,
                    uv_size=self.uv_size,
                    wire_color=wire_color,
                    coarse=assets.lod_triangles if assets else None,
                )
                if texture is not None:
                    self._scene.set_texture(texture)
        except BaseException:
            self._context.close()
            raise
        self._interop = open_interop(self._context.cuda_ordinal)

    # -- public API -----------------------------------------------------------------------
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
        """Draw a batch.

        Args:
            images: (B, H, W, 3) uint8 RGB frames, numpy or (cuda device) CuPy.
            modes: B mode names (tddfa.contract.RENDER_MODES), one per frame.
            meshes: faces of frames in mesh modes (shaded, texture, depth, pncc, normals,
                wireframe, uv); faces of frames in other modes are ignored.
            overlays: faces of frames in landmarks / pose mode (others ignored).
            slots: K, face slots per frame: a uv mode image is (S, K * S, 3).

        Returns:
            :class:`Rendered`: frames of the images' kind (CuPy stays on the GPU).
        """
        modes = [parse_mode(m) for m in modes]
        validate_images(images, len(modes))
        self.check_modes(modes)
        if meshes is not None:
            validate_meshes(meshes, len(modes), slots, self._max_index)
            if meshes.coarse is not None and not self.has_coarse_mesh:
                meshes = dataclasses.replace(meshes, coarse=None)  # no coarse mesh: full
        xp = get_xp(images)
        if xp is np:
            return self._draw(images, modes, meshes, overlays, slots, interop=False)
        if self._context.cuda_ordinal is None:
            raise ValueError(
                f"CuPy frames need a renderer on device='cuda:N', this one runs on "
                f"{self.device!r}: pass numpy frames"
            )
        if self._interop is not None:
            try:
                with self._interop.device(images):
                    return self._draw(images, modes, meshes, overlays, slots, interop=True)
            except (InteropError, TypeError):  # TypeError: a cuda-python binding mismatch
                logger.exception("CUDA-OpenGL interop failed; frames now go through the host")
                self._drop_interop()
        host = self._draw(
            xp.asnumpy(images),
            modes,
            meshes_on_host(meshes),
            overlays_on_host(overlays),
            slots,
            False,
        )
        return Rendered(xp.asarray(host.frames), {b: xp.asarray(a) for b, a in host.own.items()})

    def render(self, image: Any, vertices: Any, count: int, mode: str = DEFAULT_RENDER_MODE) -> Any:
        """Draw the first ``count`` image-space meshes over one frame (no transform, no z shift).

        Args:
            image: (H, W, 3) uint8 RGB, numpy or (cuda device) CuPy.
            vertices: (K, 3, N) float32 image-space vertices (x right, y down, z towards the
                camera), K >= count; rows from ``count`` on are ignored.
            count: number of valid faces.
            mode: a mesh mode.

        Returns:
            (H, W, 3) uint8 RGB (or the mode's own image), a new array of the image's kind.
        """
        meshes = one_frame_meshes(image, vertices, count)
        result = self.draw(image[None], [mode], meshes, slots=max(int(count), 1))
        return result.own[0] if 0 in result.own else result.frames[0]

    @property
    def uses_interop(self) -> bool:
        """True while CuPy frames take the CUDA-OpenGL interop path (no host copies)."""
        return self._interop is not None

    # -- drawing --------------------------------------------------------------------------
    def _draw(self, images, modes, meshes, overlays, slots: int, interop: bool) -> Rendered:
        batch, height, width, _ = images.shape
        if meshes is not None:
            meshes = subset_meshes(meshes, [modes[f] in MESH_MODES for f in meshes.frame])
        if overlays is not None:
            overlays = subset_overlays(
                overlays, [modes[f] in OVERLAY_MODES for f in overlays.frame]
            )
        bounds = face_bounds(meshes.vertices, meshes.transforms) if meshes else None
        geometry = overlay_geometry(overlays, modes) if overlays else None
        side = self.uv_size
        atlas = [(slots * side, side) if m in OWN_IMAGE_MODES else None for m in modes]
        # whole frames, stacked as the batch is, when GL samples the frames (uv maps: the
        # interop path uploads them as one block); else the regions around the faces
        sampled = interop and any(m in OWN_IMAGE_MODES for m in modes)
        if sampled or self.layout == "frames":
            rects = [(0, 0, width, height)] * batch
        else:
            known = bounds_on_host(bounds) if interop and bounds is not None else bounds
            boxes = layout_.face_boxes(len(modes), meshes, known, overlays, geometry)
            clamped = [m in OWN_IMAGE_MODES for m in modes]
            rects = layout_.regions(boxes, height, width, clamped)
        passes = layout_.plan_passes((height, width), rects, atlas, self._scene.max_size)
        frames = images.copy() if interop else np.array(images, copy=True)
        own: dict[int, Any] = {}
        for plan in passes:
            read, atlases = self._pass(
                images, modes, plan, meshes, bounds, overlays, geometry, interop
            )
            own.update(atlases)
            tiles = [t for f, t in plan.tiles.items() if modes[f] not in OWN_IMAGE_MODES]
            if interop:  # the drawing over the frames' rectangles, in CUDA
                blend_tiles(frames, images, read, tiles)
            else:
                self._paste(frames, read, tiles)
        return Rendered(frames, own)

    def _pass(self, images, modes, plan, meshes, bounds, overlays, geometry, interop: bool):
        """Upload, draw and read back one pass: (host: the pass's result area (plan.height,
        plan.width, 3); interop: its drawing (plan.height, plan.width, 4) RGBA), {frame: UV
        atlas}."""
        xp = get_xp(images)
        height, width = images.shape[1:3]
        drawn = set(plan.tiles) | set(plan.atlases)
        positions = normals = instances = overlay_rows = None
        counts = DrawCounts(0, 0, 0, 0)
        chosen = [] if meshes is None else [i for i, f in enumerate(meshes.frame) if f in drawn]
        if chosen:
            index = np.asarray(chosen)
            host, group = mesh_columns(meshes, index, plan, modes, (height, width), self.uv_size)
            # the usual pass draws every face, in order: no gathers then
            device_index = None if len(index) == len(meshes.frame) else xp.asarray(index)

            def take(array):
                return array if device_index is None else array[device_index]

            positions = xp.ascontiguousarray(take(meshes.vertices), dtype=xp.float32)
            if any(modes[meshes.frame[i]] in _NEEDS_NORMALS for i in chosen):
                coarse = None if meshes.coarse is None else meshes.coarse[index]
                normals = self._vertex_normals(xp, positions, coarse)
            subset = FaceBounds(take(bounds.low), take(bounds.high))
            rows = instance_array(take(meshes.transforms), subset, meshes.shift_z, host)
            order = instance_order(group)
            sorted_already = bool((order == np.arange(len(order))).all())
            instances = rows if sorted_already else rows[xp.asarray(order)]
            counts = DrawCounts(
                int((group == 0).sum()),
                int((group == 2).sum()),
                0,
                positions.shape[2],
                faces=order,
                textured=int((group == 1).sum()),
                coarse=None if meshes.coarse is None else meshes.coarse[index][order],
            )
        chosen = [] if overlays is None else [
            i for i, f in enumerate(overlays.frame) if f in plan.tiles
        ]  # fmt: skip
        if chosen:
            tiles = [plan.tiles[overlays.frame[i]] for i in chosen]
            overlay_rows = geometry.rows(
                xp.asarray(np.asarray(chosen)),
                np.array([t.offset for t in tiles], np.float64),
                np.array([t.clip for t in tiles], np.float32),
            )
            counts = dataclasses.replace(counts, overlay_vertices=int(overlay_rows.shape[0]))
        if not interop:  # the host knows every bound: clip only if something spills over
            spill = layout_.spills(plan, modes, meshes, bounds, overlays, geometry)
            counts = dataclasses.replace(counts, clip=spill)
        first, last = plan.frames[0], plan.frames[-1] + 1
        atlases = sorted(plan.atlases.items())
        with self._context.current():
            scene = self._scene
            self._prepare(plan, positions, instances, overlay_rows)
            if interop:
                self._interop.register(scene)
                buffers = {
                    "positions": positions, "normals": normals, "instances": instances,
                    "overlay": overlay_rows,
                }  # fmt: skip
                # GL samples the frames only for uv maps (whole frames then: see _draw);
                # the blend over them is CUDA's
                sampled = any(modes[f] in OWN_IMAGE_MODES for f in drawn)
                self._interop.upload(
                    images[first:last] if sampled else None, (last - first) * height, buffers
                )
            else:
                for frame, tile in plan.tiles.items():
                    scene.upload_tile_host(images[frame], tile.src, tile.dst)
                scene.upload_buffers_host(positions, normals, instances, overlay_rows)
            scene.draw(plan, counts, composite=not interop)
            if not interop:
                read = scene.read_host((0, 0, plan.width, plan.height))
                own = {f: scene.read_host((*a.origin, *a.size), drawn=True) for f, a in atlases}
                return read, own
            (drawing,) = self._interop.read([(0, 0, plan.width, plan.height)])
        own = {}
        for frame, atlas in atlases:
            (x, y), (w, h) = atlas.origin, atlas.size
            own[frame] = xp.ascontiguousarray(drawing[y : y + h, x : x + w, :3])
        return drawing, own

    def _vertex_normals(self, xp, positions: Any, coarse: np.ndarray | None) -> Any:
        """Normals of each face's mesh: the coarse faces' from the coarse triangles (a
        third of the work; they are drawn with those)."""
        if coarse is None or not coarse.any():
            return self._normals(positions)
        if coarse.all():
            return self._coarse_normals(positions)
        normals = xp.empty_like(positions)
        for chosen, compute in ((~coarse, self._normals), (coarse, self._coarse_normals)):
            at = xp.asarray(np.flatnonzero(chosen))
            normals[at] = compute(positions[at])
        return normals

    def _prepare(self, plan, positions, instances, overlay_rows) -> None:
        """Grow the GL objects for this pass (unregistering them from CUDA first)."""
        scene = self._scene
        vertex_bytes = 0 if positions is None else positions.nbytes
        instance_bytes = 0 if instances is None else instances.shape[0] * INSTANCE_FLOATS * 4
        overlay_bytes = 0 if overlay_rows is None else overlay_rows.shape[0] * OVERLAY_FLOATS * 4
        if self._interop is not None:
            self._interop.release(
                targets=plan.height > scene.size[0] or plan.width > scene.size[1],
                buffers=vertex_bytes > scene.vertex_bytes
                or instance_bytes > scene.instance_bytes
                or overlay_bytes > scene.overlay_bytes,
            )
        scene.ensure_target(plan.height, plan.width)
        scene.ensure_buffers(vertex_bytes, instance_bytes, overlay_bytes)

    @staticmethod
    def _paste(frames: np.ndarray, read: np.ndarray, tiles) -> None:
        """Each tile's result into its frame's rectangle."""
        for tile in tiles:
            x, y, w, h = tile.src
            frames[tile.frame, y : y + h, x : x + w] = read[tile.dst[1] : tile.dst[1] + h, :w]

    def _drop_interop(self) -> None:
        interop, self._interop = self._interop, None
        try:
            with self._context.current():
                interop.close()
        except InteropError:
            logger.warning("could not unregister the CUDA-OpenGL resources", exc_info=True)

    def close(self) -> None:
        """Release the GL objects, the interop registrations and the EGL context."""
        if self._context.closed:
            return
        with self._context.current():
            if self._interop is not None:
                self._interop.close()
            self._scene.delete()
        self._context.close()

    @property
    def closed(self) -> bool:
        return self._context.closed

    def __enter__(self) -> MeshRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
