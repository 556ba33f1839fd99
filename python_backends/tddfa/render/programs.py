"""The renderer's GL programs: compiled once per context, used by :mod:`tddfa.render.scene`.

- mesh: four variants, without / with clipping faces to their tiles (the clip distances cost
  llvmpipe ~20 %, so they are compiled in only where a pass needs them) and plain /
  textured fragments (the texture mode's faces are drawn on their own);
- overlay: landmark dots and pose boxes;
- composite: the drawing blended over the frames, each pixel once.

Every method needs the GL context current.
"""

from __future__ import annotations

from tddfa.gl_context import GLContextError  # sets PYOPENGL_PLATFORM=egl first
from tddfa.render import shaders
from tddfa.render.lighting import Lighting

# isort: split
# OpenGL only after tddfa.gl_context has chosen the EGL platform
from OpenGL import GL

UNITS = {"u_background": 0, "u_texture": 1, "u_ncc": 2, "u_uv": 3}  # texture units


def _compile(vertex: str, fragment: str, what: str) -> int:
    def compile_shader(kind: int, source: str) -> int:
        shader = GL.glCreateShader(kind)
        GL.glShaderSource(shader, source)
        GL.glCompileShader(shader)
        if not GL.glGetShaderiv(shader, GL.GL_COMPILE_STATUS):
            log = GL.glGetShaderInfoLog(shader).decode(errors="replace")
            raise GLContextError(f"{what} shader failed to compile: {log}")
        return shader

    stages = [
        compile_shader(GL.GL_VERTEX_SHADER, vertex),
        compile_shader(GL.GL_FRAGMENT_SHADER, fragment),
    ]
    program = GL.glCreateProgram()
    for shader in stages:
        GL.glAttachShader(program, shader)
    GL.glLinkProgram(program)
    for shader in stages:
        GL.glDeleteShader(shader)
    if not GL.glGetProgramiv(program, GL.GL_LINK_STATUS):
        log = GL.glGetProgramInfoLog(program).decode(errors="replace")
        raise GLContextError(f"{what} shader program failed to link: {log}")
    return program


class Programs:
    """The compiled programs with their constant uniforms set.

    Args:
        lighting: the shaded mode's light model.
        alpha: weight of the blended modes over the frame.
        uv_size: S, the side of a UV map.
        wire_color: RGB in [0, 1] of wireframe edges.
    """

    def __init__(
        self, lighting: Lighting, alpha: float, uv_size: int, wire_color: tuple[float, ...]
    ) -> None:
        self.mesh = {
            (clip, textured): _compile(
                shaders.with_tile_clipping(shaders.MESH_VERTEX) if clip else shaders.MESH_VERTEX,
                shaders.MESH_TEXTURE_FRAGMENT if textured else shaders.MESH_FRAGMENT,
                "mesh",
            )
            for clip in (False, True)
            for textured in (False, True)
        }
        self.overlay = _compile(shaders.OVERLAY_VERTEX, shaders.OVERLAY_FRAGMENT, "overlay")
        self.composite = _compile(shaders.COMPOSITE_VERTEX, shaders.COMPOSITE_FRAGMENT, "composite")
        GL.glUseProgram(self.composite)
        GL.glUniform1i(GL.glGetUniformLocation(self.composite, "u_drawn"), 0)
        GL.glUniform1i(GL.glGetUniformLocation(self.composite, "u_frames"), 1)
        self._composite = {
            name: GL.glGetUniformLocation(self.composite, name) for name in ("u_rect", "u_target")
        }
        self._mesh = {
            key: {
                name: GL.glGetUniformLocation(program, name)
                for name in ("u_vertices", "u_target", "u_background_size", "u_texture_size")
            }
            for key, program in self.mesh.items()
        }
        self._overlay_target = GL.glGetUniformLocation(self.overlay, "u_target")
        for program in self.mesh.values():
            self._set_constants(program, lighting, alpha, uv_size, wire_color)

    @staticmethod
    def _set_constants(program: int, lighting: Lighting, alpha: float, uv_size: int, wire) -> None:
        GL.glUseProgram(program)

        def loc(name: str) -> int:
            return GL.glGetUniformLocation(program, name)

        GL.glUniform4f(
            loc("u_light"), lighting.ambient, lighting.diffuse, lighting.specular,
            lighting.specular_exponent,
        )  # fmt: skip
        GL.glUniform3f(loc("u_light_position"), *lighting.light_position)
        GL.glUniform3f(loc("u_view_position"), *lighting.view_position)
        GL.glUniform3f(loc("u_color"), *lighting.color)
        GL.glUniform3f(loc("u_wire_color"), *wire)
        GL.glUniform1f(loc("u_alpha"), alpha)
        GL.glUniform1f(loc("u_uv_size"), float(uv_size))
        for name, unit in UNITS.items():
            if loc(name) >= 0:
                GL.glUniform1i(loc(name), unit)

    def use_mesh(
        self,
        clip: bool,
        textured: bool,
        vertices: int,
        target: tuple[int, int],
        texture_size: tuple[int, int],
    ) -> None:
        """The mesh program for this draw; ``target``: (width, height) of the target."""
        GL.glUseProgram(self.mesh[clip, textured])
        uniforms = self._mesh[clip, textured]
        GL.glUniform1i(uniforms["u_vertices"], vertices)
        GL.glUniform2f(uniforms["u_target"], *(float(v) for v in target))
        GL.glUniform2f(uniforms["u_background_size"], *(float(v) for v in target))
        GL.glUniform2f(uniforms["u_texture_size"], *(float(v) for v in texture_size))

    def use_overlay(self, target: tuple[int, int]) -> None:
        GL.glUseProgram(self.overlay)
        GL.glUniform2f(self._overlay_target, *(float(v) for v in target))

    def use_composite(self, rect: tuple[int, int, int, int], target: tuple[int, int]) -> None:
        """The composite program over ``rect`` (x, y, width, height) of the target."""
        GL.glUseProgram(self.composite)
        GL.glUniform4f(self._composite["u_rect"], *(float(v) for v in rect))
        GL.glUniform2f(self._composite["u_target"], *(float(v) for v in target))

    def delete(self) -> None:
        for program in (*self.mesh.values(), self.overlay, self.composite):
            GL.glDeleteProgram(program)
