"""Mesh renderer: every face's dense mesh, lit and alpha-blended over the frame (OpenGL/EGL).

The look follows 3DDFA_V2's renders: a white mesh lit by ambient 0.3 + Lambert diffuse 0.6
+ specular 0.1 (exponent 5) from a light on the viewing axis, blended over the frame with
alpha 0.6: ``out = (1 - alpha) * frame + alpha * shade`` where a face covers the pixel, the
frame unchanged elsewhere. The depth test keeps the nearest surface of all faces.

Coordinates: vertices come in image space, x right and y down in pixels (pixel centres at
integers), z towards the camera (larger z is nearer). The vertex shader maps them to clip
space with an orthographic projection in which image row 0 is framebuffer row 0, so the
frame uploads and reads back in its own row order with no flip.

Per frame (all in one GL context, see :mod:`tddfa.gl_context`):
1. the frame is uploaded into a background texture and blitted into the colour target;
2. one mesh pass per face (depth test LESS, depth writes on) writes
   ``mix(background texel, shade, alpha)``, so the nearest fragment wins and no pixel is
   blended twice;
3. the colour target is read back (glReadPixels on the host path).

Host path (numpy in and out) works on any device. The CUDA-OpenGL interop path
(``device="cuda:N"`` with CuPy arrays; GPU-only, see :class:`_CudaInterop`) moves frame,
vertices and result between CuPy arrays and GL objects on the GPU, never through the host.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
from typing import Any

import numpy as np

from tddfa.gl_context import GLContext, GLContextError  # sets PYOPENGL_PLATFORM=egl first
from tddfa.xp import get_xp, to_numpy

# isort: split
# OpenGL only after tddfa.gl_context has chosen the EGL platform
from OpenGL import GL
from OpenGL.raw.GL.VERSION import GL_1_0 as _raw_gl

logger = logging.getLogger(__name__)

__all__ = ["GLContextError", "InteropError", "Lighting", "MeshRenderer", "vertex_normals"]


@dataclasses.dataclass(frozen=True)
class Lighting:
    """Light model of 3DDFA_V2's renderer (Sim3DR defaults); positions in its normalised
    per-face frame (face centred, longest side 2, z towards the camera)."""

    ambient: float = 0.3
    diffuse: float = 0.6
    specular: float = 0.1
    specular_exponent: float = 5.0
    light_position: tuple[float, float, float] = (0.0, 0.0, 5.0)
    view_position: tuple[float, float, float] = (0.0, 0.0, 5.0)
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)


_VERTEX_SHADER = """
#version 330 core
layout(location = 0) in float a_x;
layout(location = 1) in float a_y;
layout(location = 2) in float a_z;
layout(location = 3) in float a_nx;
layout(location = 4) in float a_ny;
layout(location = 5) in float a_nz;
uniform vec2 u_size;      // frame (width, height) in pixels
uniform vec2 u_depth;     // (z mapped to depth 0, 1 / z range): larger z = nearer
uniform vec4 u_frame;     // per face: centre xyz and scale of the lighting frame
out vec3 v_position;
out vec3 v_normal;
void main() {
    vec3 p = vec3(a_x, a_y, a_z);
    // image row y -> framebuffer row y (no flip); pixel centres at integer coordinates
    vec2 ndc = 2.0 * (p.xy + 0.5) / u_size - 1.0;
    float depth = (u_depth.x - p.z) * u_depth.y;
    gl_Position = vec4(ndc, 2.0 * depth - 1.0, 1.0);
    v_position = (p - u_frame.xyz) * u_frame.w;
    vec3 n = vec3(a_nx, a_ny, a_nz);
    float len = length(n);
    v_normal = len > 0.0 ? n / len : vec3(0.0, 0.0, 1.0);
}
"""

_FRAGMENT_SHADER = """
#version 330 core
in vec3 v_position;
in vec3 v_normal;
uniform sampler2D u_background;
uniform vec4 u_light;     // ambient, diffuse, specular, specular exponent
uniform vec3 u_light_position;
uniform vec3 u_view_position;
uniform vec3 u_color;
uniform float u_alpha;
out vec4 frag_color;
void main() {
    float len = length(v_normal);
    vec3 n = len > 0.0 ? v_normal / len : vec3(0.0, 0.0, 1.0);
    if (n.z < 0.0) n = -n;  // two-sided: the winding order of the mesh does not matter
    vec3 l = normalize(u_light_position - v_position);
    float c = dot(n, l);
    float shade = u_light.x + u_light.y * max(c, 0.0);
    if (c > 0.0) {
        vec3 v = normalize(u_view_position - v_position);
        vec3 r = 2.0 * c * n - l;
        shade += u_light.z * clamp(pow(max(dot(v, r), 0.0), u_light.w), 0.0, 1.0);
    }
    vec3 mesh = u_color * clamp(shade, 0.0, 1.0);
    vec3 frame = texelFetch(u_background, ivec2(gl_FragCoord.xy), 0).rgb;
    frag_color = vec4(mix(frame, mesh, u_alpha), 1.0);
}
"""


# --------------------------------------------------------------------------- normals
class VertexNormals:
    """Area-weighted per-vertex normals of a fixed triangulation, numpy or CuPy alike.

    The scatter-add of face normals onto their corner vertices is ``xp.bincount`` (one per
    axis) over a flat index built once for the largest face count seen; fewer faces use a
    prefix of it.

    Args:
        triangles: (3, T) int vertex indices.
    """

    def __init__(self, triangles: np.ndarray) -> None:
        self._triangles = np.ascontiguousarray(triangles, dtype=np.int64)
        self._cache: dict[tuple[str, int], tuple[Any, Any]] = {}  # (xp, N) -> (tri, index)
        self._device_triangles: dict[int, Any] = {}  # CUDA device -> (3, T) int32 CuPy
        self._fused_failed = False

    def _fused(self, vertices: Any) -> Any:
        from tddfa import gpu_kernels

        device = vertices.device.id
        triangles = self._device_triangles.get(device)
        if triangles is None:
            import cupy

            with cupy.cuda.Device(device):
                triangles = cupy.asarray(self._triangles, dtype=cupy.int32)
            self._device_triangles[device] = triangles
        return gpu_kernels.vertex_normals(vertices, triangles)

    def _index(self, xp: Any, faces: int, n_vertices: int) -> tuple[Any, Any]:
        key = (xp.__name__, n_vertices)
        tri, index = self._cache.get(key, (None, None))
        size = faces * 3 * self._triangles.shape[1]
        if tri is None or index.size < size:
            # flat[f, j, t] = f * N + tri[j, t]  (face f, corner j, triangle t)
            tri = xp.asarray(self._triangles)
            offsets = xp.arange(faces, dtype=xp.int64)[:, None, None] * n_vertices
            index = (offsets + tri[None]).ravel()
            self._cache = {key: (tri, index)}
        return tri, index[:size]

    def __call__(self, vertices: Any) -> Any:
        """(F, 3, N) float32 vertices -> (F, 3, N) float32 unnormalised vertex normals."""
        xp = get_xp(vertices)
        if xp is not np and not self._fused_failed:
            try:
                return self._fused(vertices)
            except Exception as exc:  # noqa: BLE001 - a kernel that fails to compile
                logger.warning("fused normals kernel unavailable (%r): generic CuPy path", exc)
                self._fused_failed = True
        faces, _, n = vertices.shape
        tri, index = self._index(xp, faces, n)
        corners = xp.take(vertices, tri, axis=2)  # (F, 3 axes, 3 corners, T)
        e1 = corners[:, :, 1] - corners[:, :, 0]
        e2 = corners[:, :, 2] - corners[:, :, 0]
        cross = (
            e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1],
            e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2],
            e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0],
        )  # face normals (F, T) per axis, length = 2 * triangle area
        shape = (faces, 3, tri.shape[1])
        summed = [
            xp.bincount(
                index, weights=xp.broadcast_to(c[:, None, :], shape).ravel(), minlength=faces * n
            )
            for c in cross
        ]
        return xp.stack(summed).reshape(3, faces, n).transpose(1, 0, 2).astype(xp.float32)


def vertex_normals(vertices: Any, triangles: np.ndarray) -> Any:
    """(F, 3, N) vertices, (3, T) triangles -> (F, 3, N) float32 area-weighted normals."""
    return VertexNormals(triangles)(vertices)


# --------------------------------------------------------------------------- GL objects
def _compile_program() -> int:
    def compile_shader(kind: int, source: str) -> int:
        shader = GL.glCreateShader(kind)
        GL.glShaderSource(shader, source)
        GL.glCompileShader(shader)
        if not GL.glGetShaderiv(shader, GL.GL_COMPILE_STATUS):
            log = GL.glGetShaderInfoLog(shader).decode(errors="replace")
            raise GLContextError(f"mesh shader failed to compile: {log}")
        return shader

    shaders = [
        compile_shader(GL.GL_VERTEX_SHADER, _VERTEX_SHADER),
        compile_shader(GL.GL_FRAGMENT_SHADER, _FRAGMENT_SHADER),
    ]
    program = GL.glCreateProgram()
    for shader in shaders:
        GL.glAttachShader(program, shader)
    GL.glLinkProgram(program)
    for shader in shaders:
        GL.glDeleteShader(shader)
    if not GL.glGetProgramiv(program, GL.GL_LINK_STATUS):
        log = GL.glGetProgramInfoLog(program).decode(errors="replace")
        raise GLContextError(f"mesh shader program failed to link: {log}")
    return program


class _GLScene:
    """The GL objects of one renderer; every method needs the context current.

    ``targets_version`` / ``buffers_version`` count re-creations, so the CUDA interop
    knows when to register the new objects.
    """

    def __init__(self, triangles: np.ndarray, lighting: Lighting, alpha: float) -> None:
        self.n_triangles = triangles.shape[1]
        self.program = _compile_program()
        self._uniforms = {
            name: GL.glGetUniformLocation(self.program, name)
            for name in ("u_size", "u_depth", "u_frame", "u_background")
        }
        GL.glUseProgram(self.program)
        GL.glUniform4f(
            GL.glGetUniformLocation(self.program, "u_light"),
            lighting.ambient,
            lighting.diffuse,
            lighting.specular,
            lighting.specular_exponent,
        )
        GL.glUniform3f(
            GL.glGetUniformLocation(self.program, "u_light_position"), *lighting.light_position
        )
        GL.glUniform3f(
            GL.glGetUniformLocation(self.program, "u_view_position"), *lighting.view_position
        )
        GL.glUniform3f(GL.glGetUniformLocation(self.program, "u_color"), *lighting.color)
        GL.glUniform1f(GL.glGetUniformLocation(self.program, "u_alpha"), alpha)
        GL.glUniform1i(self._uniforms["u_background"], 0)

        self.vao = GL.glGenVertexArrays(1)
        GL.glBindVertexArray(self.vao)
        self.index_buffer = GL.glGenBuffers(1)
        GL.glBindBuffer(GL.GL_ELEMENT_ARRAY_BUFFER, self.index_buffer)
        indices = np.ascontiguousarray(triangles.T, dtype=np.uint32)  # (T, 3)
        GL.glBufferData(GL.GL_ELEMENT_ARRAY_BUFFER, indices.nbytes, indices, GL.GL_STATIC_DRAW)
        self.position_buffer, self.normal_buffer = (int(b) for b in GL.glGenBuffers(2))
        self.buffer_bytes = 0
        self.buffers_version = 0
        self._layout_vertices = -1

        self.max_size = min(
            int(GL.glGetIntegerv(GL.GL_MAX_TEXTURE_SIZE)),
            int(GL.glGetIntegerv(GL.GL_MAX_RENDERBUFFER_SIZE)),
            *(int(v) for v in GL.glGetIntegerv(GL.GL_MAX_VIEWPORT_DIMS)),
        )
        self.background, self.target = (int(t) for t in GL.glGenTextures(2))
        self.depth = int(GL.glGenRenderbuffers(1))
        self.read_fbo, self.draw_fbo = (int(f) for f in GL.glGenFramebuffers(2))
        self.size = (0, 0)
        self.targets_version = 0
        GL.glEnable(GL.GL_DEPTH_TEST)
        GL.glDepthFunc(GL.GL_LESS)
        GL.glDisable(GL.GL_BLEND)
        GL.glPixelStorei(GL.GL_UNPACK_ALIGNMENT, 1)
        GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)

    # -- targets (re-created only when the frame size changes)
    def ensure_size(self, height: int, width: int) -> None:
        if self.size == (height, width):
            return
        if max(height, width) > self.max_size:
            raise ValueError(
                f"frame {height}x{width} exceeds the GL limit {self.max_size}: downscale it"
            )
        for texture in (self.background, self.target):
            GL.glBindTexture(GL.GL_TEXTURE_2D, texture)
            GL.glTexImage2D(
                GL.GL_TEXTURE_2D, 0, GL.GL_RGBA8, width, height, 0, GL.GL_RGBA,
                GL.GL_UNSIGNED_BYTE, None,
            )  # fmt: skip
            GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MIN_FILTER, GL.GL_NEAREST)
            GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MAG_FILTER, GL.GL_NEAREST)
        GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, self.depth)
        GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_DEPTH_COMPONENT24, width, height)
        self._attach(self.read_fbo, self.background, None)
        self._attach(self.draw_fbo, self.target, self.depth)
        self.size = (height, width)
        self.targets_version += 1

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

    # -- vertex buffers: (F, 3, N) float32 planes, grown when more faces arrive
    def ensure_buffers(self, nbytes: int, n_vertices: int) -> None:
        if nbytes > self.buffer_bytes:
            for buffer in (self.position_buffer, self.normal_buffer):
                GL.glBindBuffer(GL.GL_ARRAY_BUFFER, buffer)
                GL.glBufferData(GL.GL_ARRAY_BUFFER, nbytes, None, GL.GL_DYNAMIC_DRAW)
            self.buffer_bytes = nbytes
            self.buffers_version += 1
        if n_vertices != self._layout_vertices:
            # attribute c of a face reads plane c: offset c*N floats; face k adds 3*k*N
            # through the base vertex of its draw call
            GL.glBindVertexArray(self.vao)
            for first, buffer in ((0, self.position_buffer), (3, self.normal_buffer)):
                GL.glBindBuffer(GL.GL_ARRAY_BUFFER, buffer)
                for axis in range(3):
                    GL.glEnableVertexAttribArray(first + axis)
                    GL.glVertexAttribPointer(
                        first + axis, 1, GL.GL_FLOAT, GL.GL_FALSE, 4,
                        ctypes.c_void_p(4 * axis * n_vertices),
                    )  # fmt: skip
            self._layout_vertices = n_vertices

    # -- host transfers
    def upload_frame_host(self, image: np.ndarray) -> None:
        height, width, _ = image.shape
        GL.glBindTexture(GL.GL_TEXTURE_2D, self.background)
        GL.glTexSubImage2D(
            GL.GL_TEXTURE_2D, 0, 0, 0, width, height, GL.GL_RGB, GL.GL_UNSIGNED_BYTE, image
        )

    def upload_vertices_host(self, positions: np.ndarray, normals: np.ndarray) -> None:
        for buffer, data in ((self.position_buffer, positions), (self.normal_buffer, normals)):
            GL.glBindBuffer(GL.GL_ARRAY_BUFFER, buffer)
            GL.glBufferSubData(GL.GL_ARRAY_BUFFER, 0, data.nbytes, data)

    def read_host(self) -> np.ndarray:
        height, width = self.size
        out = np.empty((height, width, 3), dtype=np.uint8)
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self.draw_fbo)
        _raw_gl.glReadPixels(
            0, 0, width, height, GL.GL_RGB, GL.GL_UNSIGNED_BYTE, out.ctypes.data_as(ctypes.c_void_p)
        )
        return out

    # -- drawing
    def draw(self, faces: np.ndarray, depth: tuple[float, float], n_vertices: int) -> None:
        """faces: (F, 4) per-face lighting frame (centre xyz, scale); depth: (z at 0, 1/range)."""
        height, width = self.size
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self.read_fbo)
        GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, self.draw_fbo)
        GL.glBlitFramebuffer(
            0, 0, width, height, 0, 0, width, height, GL.GL_COLOR_BUFFER_BIT, GL.GL_NEAREST
        )
        GL.glViewport(0, 0, width, height)
        GL.glDepthMask(GL.GL_TRUE)
        GL.glClear(GL.GL_DEPTH_BUFFER_BIT)
        GL.glUseProgram(self.program)
        GL.glActiveTexture(GL.GL_TEXTURE0)
        GL.glBindTexture(GL.GL_TEXTURE_2D, self.background)
        GL.glUniform2f(self._uniforms["u_size"], float(width), float(height))
        GL.glUniform2f(self._uniforms["u_depth"], *depth)
        GL.glBindVertexArray(self.vao)
        for k, frame in enumerate(faces.tolist()):
            GL.glUniform4f(self._uniforms["u_frame"], *frame)
            GL.glDrawElementsBaseVertex(
                GL.GL_TRIANGLES, 3 * self.n_triangles, GL.GL_UNSIGNED_INT, ctypes.c_void_p(0),
                3 * k * n_vertices,
            )  # fmt: skip

    def delete(self) -> None:
        GL.glDeleteFramebuffers(2, [self.read_fbo, self.draw_fbo])
        GL.glDeleteRenderbuffers(1, [self.depth])
        GL.glDeleteTextures([self.background, self.target])
        GL.glDeleteBuffers(3, [self.index_buffer, self.position_buffer, self.normal_buffer])
        GL.glDeleteVertexArrays(1, [self.vao])
        GL.glDeleteProgram(self.program)


# --------------------------------------------------------------------------- GPU only
class InteropError(RuntimeError):
    """A CUDA-OpenGL interop call failed (the renderer then falls back to host copies)."""


class _CudaInterop:
    """GPU-only: CuPy arrays <-> GL objects through CUDA-OpenGL interop (cuda-python).

    The frame is written into the background texture, vertices and normals into the GL
    vertex buffers, and the rendered colour target is copied out into a CuPy array: all
    device-to-device copies on CuPy's current stream. Mapping a resource orders the copy
    after earlier GL work; unmapping orders later GL work after the copy.
    """

    def __init__(self, ordinal: int) -> None:
        import cupy
        from cuda.bindings import runtime

        self.cupy = cupy
        self._cp = cupy
        self._rt = runtime
        self._ordinal = ordinal
        self._frame: dict[str, Any] = {}  # "background"/"target" -> registered resource
        self._buffers: list[Any] = []
        self._versions = (-1, -1)
        self._rgba_in = None  # (H, W, 4) uint8 staging of the frame

    def device(self, image: Any) -> Any:
        """Context manager making the renderer's CUDA device current; checks the image is on it."""
        if image.device.id != self._ordinal:
            raise ValueError(
                f"the image is on cuda:{image.device.id} but this renderer draws on "
                f"cuda:{self._ordinal}: copy it there or use a renderer per device"
            )
        return self._cp.cuda.Device(self._ordinal)

    def _check(self, result: tuple) -> Any:
        err, *values = result
        if err != self._rt.cudaError_t.cudaSuccess:
            _, name = self._rt.cudaGetErrorName(err)
            raise InteropError(f"CUDA-OpenGL interop failed: {name.decode()}")
        return values[0] if len(values) == 1 else values

    def _stream(self) -> Any:
        return self._rt.cudaStream_t(self._cp.cuda.get_current_stream().ptr)

    def register(self, scene: _GLScene) -> None:
        """(Re-)register the scene's textures/buffers after they were re-created."""
        rt = self._rt
        flags = rt.cudaGraphicsRegisterFlags
        self._check(rt.cudaSetDevice(self._ordinal))  # cuda-python's runtime: same device
        if self._versions[0] != scene.targets_version:
            self._unregister(list(self._frame.values()))
            self._frame = {
                "background": self._check(
                    rt.cudaGraphicsGLRegisterImage(
                        scene.background,
                        GL.GL_TEXTURE_2D,
                        flags.cudaGraphicsRegisterFlagsWriteDiscard,
                    )
                ),
                "target": self._check(
                    rt.cudaGraphicsGLRegisterImage(
                        scene.target, GL.GL_TEXTURE_2D, flags.cudaGraphicsRegisterFlagsReadOnly
                    )
                ),
            }
        if self._versions[1] != scene.buffers_version:
            self._unregister(self._buffers)
            self._buffers = [
                self._check(
                    rt.cudaGraphicsGLRegisterBuffer(
                        buffer, flags.cudaGraphicsRegisterFlagsWriteDiscard
                    )
                )
                for buffer in (scene.position_buffer, scene.normal_buffer)
            ]
        self._versions = (scene.targets_version, scene.buffers_version)

    def _unregister(self, resources: list[Any]) -> None:
        for resource in resources:
            self._check(self._rt.cudaGraphicsUnregisterResource(resource))

    def release(self, targets: bool, buffers: bool) -> None:
        """Unregister GL objects about to be re-specified (GL refuses to re-specify a
        texture or buffer registered with CUDA: GL_INVALID_OPERATION)."""
        if targets and self._frame:
            self._unregister(list(self._frame.values()))
            self._frame = {}
            self._versions = (-1, self._versions[1])
        if buffers and self._buffers:
            self._unregister(self._buffers)
            self._buffers = []
            self._versions = (self._versions[0], -1)

    def _map(self, resources: list[Any], stream: Any) -> None:
        # cuda-python takes one resource per call (no list): map them one after another
        for resource in resources:
            self._check(self._rt.cudaGraphicsMapResources(1, resource, stream))

    def _unmap(self, resources: list[Any], stream: Any) -> None:
        for resource in resources:
            self._check(self._rt.cudaGraphicsUnmapResources(1, resource, stream))

    def upload(self, image: Any, positions: Any, normals: Any) -> None:
        """Frame into the background texture, vertices and normals into the GL buffers,
        under one map/unmap of the three resources."""
        cp, rt = self._cp, self._rt
        height, width, _ = image.shape
        if self._rgba_in is None or self._rgba_in.shape[:2] != (height, width):
            self._rgba_in = cp.full((height, width, 4), 255, dtype=cp.uint8)
        self._rgba_in[..., :3] = image
        resources = [self._frame["background"], *self._buffers]
        stream = self._stream()
        self._map(resources, stream)
        try:
            array = self._check(rt.cudaGraphicsSubResourceGetMappedArray(resources[0], 0, 0))
            self._check(
                rt.cudaMemcpy2DToArrayAsync(
                    array, 0, 0, self._rgba_in.data.ptr, width * 4, width * 4, height,
                    rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream,
                )
            )  # fmt: skip
            for resource, data in zip(resources[1:], (positions, normals), strict=True):
                pointer, _size = self._check(rt.cudaGraphicsResourceGetMappedPointer(resource))
                self._check(
                    rt.cudaMemcpyAsync(
                        pointer, data.data.ptr, data.nbytes,
                        rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream,
                    )
                )  # fmt: skip
        finally:
            self._unmap(resources, stream)

    def read(self, height: int, width: int) -> Any:
        cp, rt = self._cp, self._rt
        rgba = cp.empty((height, width, 4), dtype=cp.uint8)
        resource, stream = self._frame["target"], self._stream()
        self._check(rt.cudaGraphicsMapResources(1, resource, stream))
        try:
            array = self._check(rt.cudaGraphicsSubResourceGetMappedArray(resource, 0, 0))
            self._check(
                rt.cudaMemcpy2DFromArrayAsync(
                    rgba.data.ptr, width * 4, array, 0, 0, width * 4, height,
                    rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream,
                )
            )  # fmt: skip
        finally:
            self._check(rt.cudaGraphicsUnmapResources(1, resource, stream))
        return cp.ascontiguousarray(rgba[..., :3])

    def close(self) -> None:
        self._unregister(list(self._frame.values()))
        self._unregister(self._buffers)
        self._frame, self._buffers, self._versions = {}, [], (-1, -1)
        self._rgba_in = None


def _open_interop(ordinal: int | None) -> _CudaInterop | None:
    """GPU-only: the interop helper, or None (host path) when CuPy/cuda-python is missing."""
    if ordinal is None:
        return None
    try:
        return _CudaInterop(ordinal)
    except ImportError as exc:
        logger.warning("CUDA-OpenGL interop unavailable (%s); frames go through the host", exc)
        return None


# --------------------------------------------------------------------------- public API
def _validate(image: Any, vertices: Any, count: int, n_index: int) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 (H, W, 3) RGB, got {image.dtype} {tuple(image.shape)}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got {tuple(image.shape)}")
    if not 0 <= count <= (vertices.shape[0] if vertices.ndim == 3 else 0):
        raise ValueError(
            f"count must be in 0..{vertices.shape[0] if vertices.ndim == 3 else 0} "
            f"(rows of vertices {tuple(vertices.shape)}), got {count}"
        )
    if vertices.ndim != 3 or vertices.shape[1] != 3 or vertices.shape[2] <= n_index:
        raise ValueError(
            f"vertices must be (K, 3, N) with N > {n_index} (the largest triangle index), "
            f"got {tuple(vertices.shape)}"
        )


def _face_frames(vertices: Any) -> tuple[np.ndarray, tuple[float, float]]:
    """Per-face lighting frames (F, 4) and the depth mapping, as small host arrays.

    The lighting frame is Sim3DR's normalisation: centre of the bounding box, scale
    2 / longest side. Depth maps the z range of all faces (padded) into (0, 1), nearer
    (larger z) to smaller depth.
    """
    xp = get_xp(vertices)
    bounds = xp.stack([vertices.min(axis=2), vertices.max(axis=2)], axis=1)  # (F, 2, 3)
    bounds = np.asarray(bounds.get() if hasattr(bounds, "get") else bounds, dtype=np.float64)
    low, high = bounds[:, 0], bounds[:, 1]
    extent = np.maximum((high - low).max(axis=1), 1e-6)
    frames = np.concatenate([(low + high) / 2, (2.0 / extent)[:, None]], axis=1)
    z_low, z_high = float(low[:, 2].min()), float(high[:, 2].max())
    pad = max(1.0, 0.01 * (z_high - z_low))
    depth = (z_high + pad, 1.0 / (z_high - z_low + 2 * pad))
    return frames.astype(np.float32), depth


class MeshRenderer:
    """Draws dense face meshes over frames with OpenGL in a headless EGL context.

    One instance owns one GL context (one per Triton model instance); ``render`` may be
    called from any thread (calls are serialised per instance).

    Args:
        triangles: (3, T) int triangle vertex indices (the no-neck BFM: T = 76,073).
        device: ``"cpu"`` (Mesa llvmpipe) or ``"cuda:N"`` (NVIDIA EGL device N; with CuPy
            inputs the frames stay on the GPU).
        alpha: opacity of the mesh over the frame.
        lighting: light model; defaults reproduce 3DDFA_V2's look.
    """

    def __init__(
        self,
        triangles: np.ndarray,
        device: str = "cpu",
        alpha: float = 0.6,
        lighting: Lighting | None = None,
    ) -> None:
        triangles = np.asarray(triangles)
        if triangles.ndim != 2 or triangles.shape[0] != 3 or triangles.shape[1] < 1:
            raise ValueError(f"triangles must be (3, T) int, got {triangles.shape}")
        if not np.issubdtype(triangles.dtype, np.integer) or triangles.min() < 0:
            raise ValueError("triangles must hold non-negative integer vertex indices")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.device = device
        self.alpha = float(alpha)
        self._max_index = int(triangles.max())
        self._normals = VertexNormals(triangles)
        self._context = GLContext(device)
        try:
            with self._context.current():
                self._scene = _GLScene(triangles, lighting or Lighting(), self.alpha)
        except BaseException:
            self._context.close()
            raise
        self._interop = _open_interop(self._context.cuda_ordinal)

    def render(self, image: Any, vertices: Any, count: int) -> Any:
        """Draw the first ``count`` faces over ``image``.

        Args:
            image: (H, W, 3) uint8 RGB, numpy or (cuda device) CuPy.
            vertices: (K, 3, N) float32 image-space vertices (x right, y down, z towards the
                camera), K >= count; rows from ``count`` on are ignored.
            count: number of valid faces.

        Returns:
            (H, W, 3) uint8 RGB, a new array of the image's kind (CuPy stays on the GPU).
        """
        count = int(count)
        _validate(image, vertices, count, self._max_index)
        if count == 0:
            return image.copy()
        xp = get_xp(image)
        if xp is np:
            return self._render_host(image, to_numpy(vertices[:count]))
        if self._context.cuda_ordinal is None:
            raise ValueError(
                f"a CuPy image needs a renderer on device='cuda:N', this one runs on "
                f"{self.device!r}: pass a numpy image"
            )
        if self._interop is not None:
            try:
                return self._render_interop(image, vertices[:count])
            except (InteropError, TypeError):  # TypeError: a cuda-python binding mismatch
                logger.exception("CUDA-OpenGL interop failed; frames now go through the host")
                self._drop_interop()
        host = self._render_host(xp.asnumpy(image), to_numpy(vertices[:count]))
        return xp.asarray(host)

    @property
    def uses_interop(self) -> bool:
        """True while CuPy frames take the CUDA-OpenGL interop path (no host copies)."""
        return self._interop is not None

    def _prepare(self, image_shape: tuple[int, ...], positions: Any) -> _GLScene:
        scene = self._scene
        if self._interop is not None:
            self._interop.release(
                targets=scene.size != (image_shape[0], image_shape[1]),
                buffers=positions.nbytes > scene.buffer_bytes,
            )
        scene.ensure_size(image_shape[0], image_shape[1])
        scene.ensure_buffers(positions.nbytes, positions.shape[2])
        return scene

    def _render_host(self, image: np.ndarray, rows: np.ndarray) -> np.ndarray:
        positions = np.ascontiguousarray(rows, dtype=np.float32)
        normals = self._normals(positions)
        frames, depth = _face_frames(positions)
        with self._context.current():
            scene = self._prepare(image.shape, positions)
            scene.upload_frame_host(np.ascontiguousarray(image))
            scene.upload_vertices_host(positions, normals)
            scene.draw(frames, depth, positions.shape[2])
            return scene.read_host()

    def _render_interop(self, image: Any, rows: Any) -> Any:
        """GPU-only: CuPy frame and vertices in, CuPy frame out, nothing through the host."""
        interop = self._interop
        with interop.device(image):
            cp = interop.cupy
            positions = cp.ascontiguousarray(cp.asarray(rows), dtype=cp.float32)
            normals = self._normals(positions)
            frames, depth = _face_frames(positions)  # (F, 4) + 2 floats to the host
            with self._context.current():
                scene = self._prepare(image.shape, positions)
                interop.register(scene)
                interop.upload(image, positions, normals)
                scene.draw(frames, depth, positions.shape[2])
                return interop.read(*image.shape[:2])

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
