"""The GL objects of one renderer and the one pass that draws a batch into them.

Objects (all created once, grown when a batch needs more, never shrunk):

- RGBA8 textures of the target size: ``background`` (the frames), ``target`` (the faces'
  colour and weight) and ``result`` (the two blended), a depth renderbuffer, two
  framebuffers;
- vertex data: model-space positions and normals (F, 3, N) float32, planar, read as six
  float attributes; face k is draw k of one ``glMultiDrawElementsIndirect`` (base vertex
  3 k N, base instance = its row of the per-face buffer), so one call draws every face;
- per-vertex constants (ncc code, UV coordinates) as texture buffers, the triangle index
  buffer, the per-face buffer, the draw commands and the 2D overlay buffer;
- the texture image of the ``texture`` mode.

``targets_version`` / ``buffers_version`` count re-creations so the CUDA interop knows
when to register new objects. Every method needs the GL context current.
"""

from __future__ import annotations

import ctypes
import dataclasses

import numpy as np

from tddfa.gl_context import GL_MIN_VERSION, GLContextError  # sets PYOPENGL_PLATFORM=egl
from tddfa.render import shaders
from tddfa.render.layout import Pass
from tddfa.render.lighting import Lighting
from tddfa.render.programs import Programs

# isort: split
# OpenGL only after tddfa.gl_context has chosen the EGL platform
from OpenGL import GL
from OpenGL.raw.GL.VERSION import GL_1_0 as _raw_gl10
from OpenGL.raw.GL.VERSION import GL_1_1 as _raw_gl11

_FLOAT = 4
_COMMAND = 5  # uint32 per indirect draw: count, instances, first index, base vertex, base instance


@dataclasses.dataclass(frozen=True)
class DrawCounts:
    """What one pass draws: faces in three groups, in this order of the per-face rows
    (filled, textured, wireframe; ``faces`` (F,) says where each one's vertices are in the
    vertex buffers, in row order), then overlay vertices."""

    filled: int
    wireframe: int
    overlay_vertices: int
    vertices_per_face: int
    faces: np.ndarray | None = None
    clip: bool = True  # clip faces to their tiles (off when none reaches beyond its tile)
    textured: int = 0
    coarse: np.ndarray | None = None  # (F,) bool in row order: drawn with the coarse mesh


class Scene:
    """GL objects and drawing of one renderer.

    Args:
        triangles: (3, T) int triangles.
        lighting: the shaded mode's light model.
        alpha: opacity of blended modes over the frame.
        ncc: (3, V) float32 per-vertex PNCC colours or None (zeros: pncc unavailable).
        uv: (V, 2) float32 per-vertex BFM texture coordinates or None.
        uv_size: S, the side of a UV map.
        wire_color: RGB in [0, 1] of wireframe edges.
        coarse: (3, T') int triangles over the same vertices for small faces, or None.
    """

    def __init__(
        self,
        triangles: np.ndarray,
        lighting: Lighting,
        alpha: float,
        ncc: np.ndarray | None,
        uv: np.ndarray | None,
        uv_size: int,
        wire_color: tuple[float, float, float],
        coarse: np.ndarray | None = None,
    ) -> None:
        self.n_triangles = int(triangles.shape[1])
        n_static = int(triangles.max()) + 1
        version = (
            int(GL.glGetIntegerv(GL.GL_MAJOR_VERSION)),
            int(GL.glGetIntegerv(GL.GL_MINOR_VERSION)),
        )
        if version < GL_MIN_VERSION:
            raise GLContextError(
                f"the renderer needs OpenGL {GL_MIN_VERSION[0]}.{GL_MIN_VERSION[1]} (multi-draw "
                f"indirect), the context has {version[0]}.{version[1]}: use Mesa >= 20 "
                "(llvmpipe) or the NVIDIA driver's EGL"
            )
        self.max_size = min(
            int(GL.glGetIntegerv(GL.GL_MAX_TEXTURE_SIZE)),
            int(GL.glGetIntegerv(GL.GL_MAX_RENDERBUFFER_SIZE)),
            *(int(v) for v in GL.glGetIntegerv(GL.GL_MAX_VIEWPORT_DIMS)),
        )
        self.programs = Programs(lighting, alpha, uv_size, wire_color)

        # -- per-vertex constants: planar float texture buffers (3, V) and (2, V)
        self.ncc_buffer, self.uv_buffer = (int(b) for b in GL.glGenBuffers(2))
        self.ncc_texture, self.uv_texture = (int(t) for t in GL.glGenTextures(2))
        ncc_planes = np.zeros((3, n_static), np.float32)
        if ncc is not None:
            ncc_planes[:, : ncc.shape[1]] = np.asarray(ncc, np.float32)[:, :n_static]
        uv_planes = np.zeros((2, n_static), np.float32)
        if uv is not None:
            uv_planes[:, : uv.shape[0]] = np.asarray(uv, np.float32).T[:, :n_static]
        for buffer, texture, planes in (
            (self.ncc_buffer, self.ncc_texture, ncc_planes),
            (self.uv_buffer, self.uv_texture, uv_planes),
        ):
            planes = np.ascontiguousarray(planes)
            GL.glBindBuffer(GL.GL_TEXTURE_BUFFER, buffer)
            GL.glBufferData(GL.GL_TEXTURE_BUFFER, planes.nbytes, planes, GL.GL_STATIC_DRAW)
            GL.glBindTexture(GL.GL_TEXTURE_BUFFER, texture)
            GL.glTexBuffer(GL.GL_TEXTURE_BUFFER, GL.GL_R32F, buffer)

        # -- mesh: triangles, vertex buffers (attributes 0-5), per-face rows (divisor 1)
        self.mesh_vao = int(GL.glGenVertexArrays(1))
        GL.glBindVertexArray(self.mesh_vao)
        (
            self.index_buffer, self.position_buffer, self.normal_buffer, self.instance_buffer,
            self.command_buffer,
        ) = (int(b) for b in GL.glGenBuffers(5))  # fmt: skip
        GL.glBindBuffer(GL.GL_ELEMENT_ARRAY_BUFFER, self.index_buffer)
        # the full mesh's triangles, then the coarse ones: (first index, count) of each
        lists = [triangles] if coarse is None else [triangles, coarse]
        indices = np.concatenate([np.asarray(t).T.ravel() for t in lists]).astype(np.uint32)
        GL.glBufferData(GL.GL_ELEMENT_ARRAY_BUFFER, indices.nbytes, indices, GL.GL_STATIC_DRAW)
        self.index_ranges = {False: (0, 3 * self.n_triangles)}
        if coarse is not None:
            self.index_ranges[True] = (3 * self.n_triangles, 3 * int(coarse.shape[1]))
        self.vertex_bytes = 0
        self.instance_bytes = 0
        self._layout_vertices = -1
        self._instance_layout = False
        GL.glBindVertexArray(0)
        # -- overlays: (M, OVERLAY_FLOATS) float32 vertices, drawn as triangles
        self.overlay_vao = int(GL.glGenVertexArrays(1))
        GL.glBindVertexArray(self.overlay_vao)
        self.overlay_buffer = int(GL.glGenBuffers(1))
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self.overlay_buffer)
        stride = shaders.OVERLAY_FLOATS * _FLOAT
        for location, (size, offset) in enumerate(((2, 0), (2, 2), (3, 4), (4, 7))):
            GL.glEnableVertexAttribArray(location)
            GL.glVertexAttribPointer(
                location, size, GL.GL_FLOAT, GL.GL_FALSE, stride, ctypes.c_void_p(offset * _FLOAT)
            )
        self.overlay_bytes = 0
        GL.glBindVertexArray(0)
        self.buffers_version = 0

        # -- frames: background and target textures, depth, framebuffers
        self.background, self.target, self.result, self.texture = (
            int(t) for t in GL.glGenTextures(4)
        )
        self.depth = int(GL.glGenRenderbuffers(1))
        self.draw_fbo, self.result_fbo = (int(f) for f in GL.glGenFramebuffers(2))
        self.size = (0, 0)  # (height, width) capacity of background/target
        self.targets_version = 0
        self.texture_size = (1, 1)
        self.set_texture(np.full((1, 1, 3), 128, np.uint8))
        GL.glPixelStorei(GL.GL_UNPACK_ALIGNMENT, 1)
        GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)

    # -- capacity -------------------------------------------------------------------------
    def ensure_target(self, height: int, width: int) -> bool:
        """Grow background/target/depth to at least (height, width); True if re-created."""
        if height <= self.size[0] and width <= self.size[1]:
            return False
        if max(height, width) > self.max_size:
            raise ValueError(f"{height}x{width} exceeds the GL limit {self.max_size}")
        height, width = max(height, self.size[0]), max(width, self.size[1])
        for texture in (self.background, self.target, self.result):
            GL.glBindTexture(GL.GL_TEXTURE_2D, texture)
            GL.glTexImage2D(
                GL.GL_TEXTURE_2D, 0, GL.GL_RGBA8, width, height, 0, GL.GL_RGBA,
                GL.GL_UNSIGNED_BYTE, None,
            )  # fmt: skip
            # LINEAR: the uv mode samples frames bilinearly (texelFetch ignores filters)
            GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MIN_FILTER, GL.GL_LINEAR)
            GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MAG_FILTER, GL.GL_LINEAR)
            GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_WRAP_S, GL.GL_CLAMP_TO_EDGE)
            GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_WRAP_T, GL.GL_CLAMP_TO_EDGE)
        GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, self.depth)
        GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_DEPTH_COMPONENT24, width, height)
        self._attach(self.draw_fbo, self.target, self.depth)
        self._attach(self.result_fbo, self.result, None)
        self.size = (height, width)
        self.targets_version += 1
        return True

    @staticmethod
    def _attach(fbo: int, texture: int, depth: int | None) -> None:
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, fbo)
        GL.glFramebufferTexture2D(
            GL.GL_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT0, GL.GL_TEXTURE_2D, texture, 0
        )
        if depth is not None:
            GL.glFramebufferRenderbuffer(
                GL.GL_FRAMEBUFFER, GL.GL_DEPTH_ATTACHMENT, GL.GL_RENDERBUFFER, depth
            )
        status = GL.glCheckFramebufferStatus(GL.GL_FRAMEBUFFER)
        if status != GL.GL_FRAMEBUFFER_COMPLETE:
            raise GLContextError(f"framebuffer incomplete (status 0x{int(status):x})")

    def ensure_buffers(self, vertex_bytes: int, instance_bytes: int, overlay_bytes: int) -> bool:
        """Grow the vertex, per-face and overlay buffers; True if any was re-created."""
        grown = False
        for names, need in (
            (("position_buffer", "normal_buffer"), vertex_bytes),
            (("instance_buffer",), instance_bytes),
            (("overlay_buffer",), overlay_bytes),
        ):
            have = {"position_buffer": "vertex_bytes", "instance_buffer": "instance_bytes",
                    "overlay_buffer": "overlay_bytes"}[names[0]]  # fmt: skip
            if need <= getattr(self, have) and getattr(self, have) > 0:
                continue  # a buffer always gets a data store: CUDA cannot register one without
            size = max(need, 2 * getattr(self, have), 4096)
            for name in names:
                GL.glBindBuffer(GL.GL_ARRAY_BUFFER, getattr(self, name))
                GL.glBufferData(GL.GL_ARRAY_BUFFER, size, None, GL.GL_DYNAMIC_DRAW)
            setattr(self, have, size)
            grown = True
        if grown:
            self.buffers_version += 1
        return grown

    def _vertex_layout(self, n_vertices: int) -> None:
        """Point attributes 0-5 at the planes of face 0 (the draws' base vertex 3 k N moves
        them to face k) and the per-face attributes at row 0 (base instance: row k)."""
        GL.glBindVertexArray(self.mesh_vao)
        if n_vertices != self._layout_vertices:
            for first, buffer in ((0, self.position_buffer), (3, self.normal_buffer)):
                GL.glBindBuffer(GL.GL_ARRAY_BUFFER, buffer)
                for axis in range(3):
                    GL.glEnableVertexAttribArray(first + axis)
                    GL.glVertexAttribPointer(
                        first + axis, 1, GL.GL_FLOAT, GL.GL_FALSE, 4,
                        ctypes.c_void_p(4 * axis * n_vertices),
                    )  # fmt: skip
            self._layout_vertices = n_vertices
        if not self._instance_layout:
            GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self.instance_buffer)
            stride = shaders.INSTANCE_FLOATS * _FLOAT
            for i in range(shaders.INSTANCE_ATTRIBUTES):
                location = shaders.FIRST_INSTANCE_LOCATION + i
                GL.glEnableVertexAttribArray(location)
                GL.glVertexAttribPointer(
                    location, 4, GL.GL_FLOAT, GL.GL_FALSE, stride, ctypes.c_void_p(16 * i)
                )
                GL.glVertexAttribDivisor(location, 1)
            self._instance_layout = True

    def set_texture(self, image: np.ndarray) -> None:
        """The texture mode's image: (H, W, 3) uint8 RGB, row 0 at the top."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        height, width = image.shape[:2]
        if max(height, width) > self.max_size:
            raise ValueError(f"texture {height}x{width} exceeds the GL limit {self.max_size}")
        GL.glBindTexture(GL.GL_TEXTURE_2D, self.texture)
        GL.glPixelStorei(GL.GL_UNPACK_ALIGNMENT, 1)
        GL.glTexImage2D(
            GL.GL_TEXTURE_2D, 0, GL.GL_RGB8, width, height, 0, GL.GL_RGB, GL.GL_UNSIGNED_BYTE,
            image,
        )  # fmt: skip
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MIN_FILTER, GL.GL_LINEAR)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MAG_FILTER, GL.GL_LINEAR)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_WRAP_S, GL.GL_CLAMP_TO_EDGE)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_WRAP_T, GL.GL_CLAMP_TO_EDGE)
        self.texture_size = (width, height)

    # -- host transfers -------------------------------------------------------------------
    def upload_tile_host(self, image: np.ndarray, src: tuple, dst: tuple) -> None:
        """Copy the ``src`` rectangle (x, y, w, h) of a C-contiguous (H, W, 3) uint8 frame to
        ``dst`` (x, y) of the background."""
        x, y, w, h = src
        GL.glBindTexture(GL.GL_TEXTURE_2D, self.background)
        GL.glPixelStorei(GL.GL_UNPACK_ROW_LENGTH, image.shape[1])
        GL.glPixelStorei(GL.GL_UNPACK_SKIP_PIXELS, x)
        GL.glPixelStorei(GL.GL_UNPACK_SKIP_ROWS, y)
        try:
            _raw_gl11.glTexSubImage2D(
                GL.GL_TEXTURE_2D, 0, dst[0], dst[1], w, h, GL.GL_RGB, GL.GL_UNSIGNED_BYTE,
                image.ctypes.data_as(ctypes.c_void_p),
            )  # fmt: skip
        finally:
            GL.glPixelStorei(GL.GL_UNPACK_ROW_LENGTH, 0)
            GL.glPixelStorei(GL.GL_UNPACK_SKIP_PIXELS, 0)
            GL.glPixelStorei(GL.GL_UNPACK_SKIP_ROWS, 0)

    def upload_buffers_host(
        self,
        positions: np.ndarray | None,
        normals: np.ndarray | None,
        instances: np.ndarray | None,
        overlay: np.ndarray | None,
    ) -> None:
        for buffer, target, data in (
            (self.position_buffer, GL.GL_ARRAY_BUFFER, positions),
            (self.normal_buffer, GL.GL_ARRAY_BUFFER, normals),
            (self.instance_buffer, GL.GL_ARRAY_BUFFER, instances),
            (self.overlay_buffer, GL.GL_ARRAY_BUFFER, overlay),
        ):
            if data is not None and data.size:
                data = np.ascontiguousarray(data, dtype=np.float32)
                GL.glBindBuffer(target, buffer)
                GL.glBufferSubData(target, 0, data.nbytes, data)

    def read_host(self, rect: tuple[int, int, int, int], drawn: bool = False) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the result at ``rect`` (x, y, w, h); ``drawn``: of the
        drawing itself instead (the UV atlases)."""
        x, y, width, height = rect
        out = np.empty((height, width, 3), dtype=np.uint8)
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self.draw_fbo if drawn else self.result_fbo)
        _raw_gl10.glReadPixels(
            x, y, width, height, GL.GL_RGB, GL.GL_UNSIGNED_BYTE, out.ctypes.data_as(ctypes.c_void_p)
        )
        return out

    # -- drawing --------------------------------------------------------------------------
    def draw(self, plan: Pass, counts: DrawCounts, composite: bool = True) -> None:
        """Draw one pass (after the uploads): faces, then overlays, into the target cleared to
        (0, 0, 0, 0) over the pass's area, then (``composite``) the result: that drawing over
        the frames (the CUDA interop path blends in CUDA instead: tddfa.render.blend)."""
        width, height = plan.width, plan.height
        capacity_h, capacity_w = self.size
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self.draw_fbo)
        GL.glViewport(0, 0, capacity_w, capacity_h)
        GL.glEnable(GL.GL_SCISSOR_TEST)
        GL.glScissor(0, 0, width, height)
        GL.glClearColor(0.0, 0.0, 0.0, 0.0)
        GL.glDepthMask(GL.GL_TRUE)
        GL.glClear(GL.GL_COLOR_BUFFER_BIT | GL.GL_DEPTH_BUFFER_BIT)
        for i in range(4):
            (GL.glEnable if counts.clip else GL.glDisable)(GL.GL_CLIP_DISTANCE0 + i)
        GL.glDisable(GL.GL_BLEND)
        if counts.filled + counts.textured + counts.wireframe:
            self._draw_meshes(counts, capacity_w, capacity_h)
        GL.glDisable(GL.GL_DEPTH_TEST)
        GL.glBindVertexArray(self.overlay_vao)
        if counts.overlay_vertices:
            self.programs.use_overlay((capacity_w, capacity_h))
            GL.glDrawArrays(GL.GL_TRIANGLES, 0, counts.overlay_vertices)
        for i in range(4):
            GL.glDisable(GL.GL_CLIP_DISTANCE0 + i)
        if not composite:
            GL.glDisable(GL.GL_SCISSOR_TEST)
            GL.glBindVertexArray(0)
            return
        # the result: the drawing blended over the frames, every pixel once
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self.result_fbo)
        self.programs.use_composite((0, 0, width, height), (capacity_w, capacity_h))
        for unit, texture in ((0, self.target), (1, self.background)):
            GL.glActiveTexture(GL.GL_TEXTURE0 + unit)
            GL.glBindTexture(GL.GL_TEXTURE_2D, texture)
        GL.glActiveTexture(GL.GL_TEXTURE0)
        GL.glDrawArrays(GL.GL_TRIANGLE_STRIP, 0, 4)
        GL.glDisable(GL.GL_SCISSOR_TEST)
        GL.glBindVertexArray(0)

    def _use(self, clip: bool, textured: bool, n: int, capacity_w: int, capacity_h: int) -> None:
        self.programs.use_mesh(clip, textured, n, (capacity_w, capacity_h), self.texture_size)

    def _draw_meshes(self, counts: DrawCounts, capacity_w: int, capacity_h: int) -> None:
        n = counts.vertices_per_face
        for texture, target, unit in (
            (self.background, GL.GL_TEXTURE_2D, 0),
            (self.texture, GL.GL_TEXTURE_2D, 1),
            (self.ncc_texture, GL.GL_TEXTURE_BUFFER, 2),
            (self.uv_texture, GL.GL_TEXTURE_BUFFER, 3),
        ):
            GL.glActiveTexture(GL.GL_TEXTURE0 + unit)
            GL.glBindTexture(target, texture)
        GL.glActiveTexture(GL.GL_TEXTURE0)
        self._vertex_layout(n)
        # draw r: face counts.faces[r]'s vertices (base vertex 3 k N), per-face row r
        faces = len(counts.faces)
        commands = np.zeros((faces, _COMMAND), np.uint32)
        coarse = np.zeros(faces, bool) if counts.coarse is None else np.asarray(counts.coarse)
        for lod, (first, count) in self.index_ranges.items():
            commands[coarse == lod, 0] = count
            commands[coarse == lod, 2] = first
        commands[:, 1] = 1
        commands[:, 3] = 3 * n * np.asarray(counts.faces, np.int64)
        commands[:, 4] = np.arange(faces)
        GL.glBindBuffer(GL.GL_DRAW_INDIRECT_BUFFER, self.command_buffer)
        GL.glBufferData(GL.GL_DRAW_INDIRECT_BUFFER, commands.nbytes, commands, GL.GL_STREAM_DRAW)
        GL.glEnable(GL.GL_DEPTH_TEST)
        GL.glDepthFunc(GL.GL_LESS)

        def draw(first: int, count: int) -> None:
            GL.glMultiDrawElementsIndirect(
                GL.GL_TRIANGLES, GL.GL_UNSIGNED_INT, ctypes.c_void_p(first * _COMMAND * 4),
                count, 0,
            )  # fmt: skip

        if counts.filled:
            self._use(counts.clip, False, n, capacity_w, capacity_h)
            draw(0, counts.filled)
        if counts.textured:
            self._use(counts.clip, True, n, capacity_w, capacity_h)
            draw(counts.filled, counts.textured)
        if counts.wireframe:
            # visible edges only: the surface's depth first (pushed back a little), then its
            # edges where they are not behind it
            first = counts.filled + counts.textured
            self._use(counts.clip, False, n, capacity_w, capacity_h)
            GL.glColorMask(GL.GL_FALSE, GL.GL_FALSE, GL.GL_FALSE, GL.GL_FALSE)
            GL.glEnable(GL.GL_POLYGON_OFFSET_FILL)
            GL.glPolygonOffset(1.0, 1.0)
            draw(first, counts.wireframe)
            GL.glDisable(GL.GL_POLYGON_OFFSET_FILL)
            GL.glColorMask(GL.GL_TRUE, GL.GL_TRUE, GL.GL_TRUE, GL.GL_TRUE)
            GL.glDepthFunc(GL.GL_LEQUAL)
            GL.glPolygonMode(GL.GL_FRONT_AND_BACK, GL.GL_LINE)
            draw(first, counts.wireframe)
            GL.glPolygonMode(GL.GL_FRONT_AND_BACK, GL.GL_FILL)
            GL.glDepthFunc(GL.GL_LESS)

    def delete(self) -> None:
        GL.glDeleteFramebuffers(2, [self.draw_fbo, self.result_fbo])
        GL.glDeleteRenderbuffers(1, [self.depth])
        GL.glDeleteTextures(
            [
                self.background,
                self.target,
                self.result,
                self.texture,
                self.ncc_texture,
                self.uv_texture,
            ]  # fmt: skip
        )
        buffers = [
            self.index_buffer, self.ncc_buffer, self.uv_buffer, self.instance_buffer,
            self.position_buffer, self.normal_buffer, self.overlay_buffer, self.command_buffer,
        ]  # fmt: skip
        GL.glDeleteBuffers(len(buffers), buffers)
        GL.glDeleteVertexArrays(2, [self.mesh_vao, self.overlay_vao])
        self.programs.delete()
