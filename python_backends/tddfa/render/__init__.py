"""Drawing faces over frames: a compiled CPU rasteriser (numba) on CPU, OpenGL on the
NVIDIA EGL device on GPU (the same GL renderer also runs on Mesa llvmpipe: the reference
the CPU renderer's pictures are tested against).

One idea per module:

- :mod:`~tddfa.render.modes`: the render modes and their validation;
- :mod:`~tddfa.render.faces`: the faces a batch draws, as the renderer takes them;
- :mod:`~tddfa.render.layout`: where each frame of a batch goes in the one framebuffer;
- :mod:`~tddfa.render.instances`: per-face numbers for the mesh shader;
- :mod:`~tddfa.render.overlays`: landmark dots and pose boxes as 2D triangles;
- :mod:`~tddfa.render.normals`: area-weighted vertex normals (numpy / CuPy);
- :mod:`~tddfa.render.shaders`: the GLSL;
- :mod:`~tddfa.render.programs`: the compiled GL programs and their uniforms;
- :mod:`~tddfa.render.scene`: the GL objects and the pass that draws a batch;
- :mod:`~tddfa.render.interop`: CUDA-OpenGL interop (GPU only);
- :mod:`~tddfa.render.blend`: the drawing blended over the frames in CUDA (GPU only);
- :mod:`~tddfa.render.renderer`: :class:`MeshRenderer`, which ties them together;
- :mod:`~tddfa.render.lighting`: the shaded mode's light model (both renderers);
- :mod:`~tddfa.render.shading`: the CPU renderer's vertex stage;
- :mod:`~tddfa.render.raster`: the CPU renderer's triangle, line and blend kernels;
- :mod:`~tddfa.render.cpu_renderer`: ``CpuRenderer``, the renderer of CPU builds (numba,
  imported only where a CPU renderer is built: GPU machines need not have it);
- :mod:`~tddfa.render.assets`: the per-vertex tables and texture (render_assets.npz);
- :mod:`~tddfa.render.step`: the face_renderer and face_vertices steps.

Importing this package selects PyOpenGL's EGL platform (tddfa.gl_context) before OpenGL.
"""

from tddfa.gl_context import GLContextError  # first: sets PYOPENGL_PLATFORM=egl
from tddfa.render.interop import InteropError
from tddfa.render.lighting import Lighting
from tddfa.render.normals import VertexNormals, vertex_normals
from tddfa.render.renderer import MeshFaces, MeshRenderer, OverlayFaces, Rendered

__all__ = [
    "GLContextError",
    "InteropError",
    "Lighting",
    "MeshFaces",
    "MeshRenderer",
    "OverlayFaces",
    "Rendered",
    "VertexNormals",
    "vertex_normals",
]
