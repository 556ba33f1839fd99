"""Fixtures of the renderer tests: real faces of emma.jpg (the in-process ensemble's
PARAMS and FACE_BOXES, turned back into the renderer's inputs), the BFM and the render
assets of the built repository, and face_renderer steps built from them (the CPU
rasteriser and OpenGL on Mesa llvmpipe)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("EGL_PLATFORM", "surfaceless")

from tddfa import gl_context  # noqa: E402  (after EGL_PLATFORM; sets PYOPENGL_PLATFORM)


def _egl_problem() -> str | None:
    try:
        context = gl_context.GLContext("cpu")
    except Exception as exc:  # any EGL/driver failure means: no headless GL here
        return f"{type(exc).__name__}: {exc}"
    context.close()
    return None


EGL_PROBLEM = _egl_problem()


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if EGL_PROBLEM and Path(str(item.fspath)).resolve().is_relative_to(here):
            item.add_marker(
                pytest.mark.skip(
                    reason=f"EGL/Mesa llvmpipe cannot initialise ({EGL_PROBLEM}); apt-get "
                    "install libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0"
                )
            )


@pytest.fixture(scope="session")
def render_version(built_repository: Path, asset_dir: Path, tmp_path_factory) -> Path:
    """A face_renderer version folder: the build's bfm.npz and a fresh render_assets.npz."""
    from tddfa_tools.build.render_assets import build_render_assets

    folder = tmp_path_factory.mktemp("face_renderer")
    (folder / "bfm.npz").symlink_to(
        (built_repository / "face_renderer" / "1" / "bfm.npz").resolve()
    )
    build_render_assets(asset_dir, folder / "render_assets.npz", download=False)
    return folder


@pytest.fixture(scope="session")
def bfm(render_version: Path):
    from tddfa.bfm import load_bfm

    return load_bfm(render_version / "bfm.npz")


@pytest.fixture(scope="session")
def render_assets(render_version: Path):
    from tddfa.render.assets import load_render_assets

    return load_render_assets(render_version / "render_assets.npz")


@pytest.fixture(scope="session")
def emma(landmark_pipeline, test_images) -> dict[str, np.ndarray]:
    """emma.jpg (3 faces) as a batch of one: IMAGE, ALPHA_SHP, ALPHA_EXP, TRANSFORM,
    NUM_FACES, and the ensemble's LANDMARKS for comparisons."""
    from tddfa.render.step import inputs_from_outputs

    image = test_images["emma.jpg"]
    outputs = landmark_pipeline(image)
    assert int(outputs["FACE_COUNT"][0, 0]) == 3
    return {**inputs_from_outputs(outputs, image[None]), "LANDMARKS": outputs["LANDMARKS"]}


@pytest.fixture(scope="session")
def render_step(render_version: Path):
    """The face_renderer step of a CPU build (the compiled CPU rasteriser)."""
    from tddfa.render.step import build_render_step

    step = build_render_step(render_version)
    yield step
    step.close()


@pytest.fixture(scope="session")
def gl_render_step(render_version: Path):
    """The same step drawn by OpenGL on Mesa llvmpipe: the GPU renderer's code, and the
    reference the CPU renderer's pictures are compared with."""
    from tddfa.render.step import build_render_step

    step = build_render_step(render_version, opengl=True)
    yield step
    step.close()


@pytest.fixture(params=["cpu", "opengl"])
def any_step(request):
    """Each renderer's face_renderer step in turn: both must meet the modes' definitions."""
    return request.getfixturevalue("render_step" if request.param == "cpu" else "gl_render_step")


@pytest.fixture(params=["cpu", "opengl"])
def renderer_type(request):
    """Each renderer class in turn (same keyword arguments): CpuRenderer, MeshRenderer."""
    if request.param == "cpu":
        from tddfa.render.cpu_renderer import CpuRenderer

        return CpuRenderer
    from tddfa.render import MeshRenderer

    return MeshRenderer
