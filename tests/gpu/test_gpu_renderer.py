"""The face_renderer step on an NVIDIA EGL device with CUDA-OpenGL interop (CuPy in, CuPy
out), every render mode against the CPU renderer's picture (Mesa llvmpipe, written by
tests/gpu/make_expected.py), batched, and against its own host path on the same GPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tddfa.contract import RENDER_MODE_PARAMETER, RENDER_MODES, UV_MODE

SMALL = ("JianzhuGuo.jpg", "trump_hillary.jpg")
FACES = ("ALPHA_SHP", "ALPHA_EXP", "TRANSFORM", "NUM_FACES")


@pytest.fixture(scope="module")
def version(gpu_repository: Path, asset_dir: Path, tmp_path_factory) -> Path:
    """face_renderer's version folder of the GPU build (render_assets.npz built if absent)."""
    from tddfa.render.assets import RENDER_ASSETS_FILE
    from tddfa_tools.build.render_assets import build_render_assets

    folder = gpu_repository / "face_renderer" / "1"
    if (folder / RENDER_ASSETS_FILE).is_file():
        return folder
    scratch = tmp_path_factory.mktemp("face_renderer")
    shutil.copy2(folder / "bfm.npz", scratch / "bfm.npz")
    build_render_assets(asset_dir, scratch / RENDER_ASSETS_FILE, download=False)
    return scratch


@pytest.fixture(scope="module")
def step(version: Path):
    from tddfa.render.step import build_render_step

    step = build_render_step(version, "cuda:0")
    yield step
    step.close()


def device_inputs(name: str, test_images, cpu_expected, copies: int = 1) -> dict:
    import cupy

    inputs = {"IMAGE": test_images[name][None]}
    inputs.update({key: cpu_expected[f"{name}:RENDER_INPUT:{key}"] for key in FACES})
    return {k: cupy.asarray(np.concatenate([v] * copies)) for k, v in inputs.items()}


def assert_close_to_cpu(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    diff = np.abs(got.astype(int) - want.astype(int)).max(axis=-1)
    # rasterisers differ on edge pixels only; colours are the same arithmetic
    assert diff.mean() < 1.0, f"{what}: mean pixel difference {diff.mean():.3f}"
    assert (diff > 16).mean() < 0.005, f"{what}: {(diff > 16).mean():.3%} of pixels > 16 off"


@pytest.mark.parametrize("mode", RENDER_MODES)
@pytest.mark.parametrize("name", SMALL)
def test_every_mode_close_to_the_cpu_picture(step, name, mode, test_images, cpu_expected):
    import cupy

    inputs = device_inputs(name, test_images, cpu_expected)
    out = step.run(inputs, [{RENDER_MODE_PARAMETER: mode}])["RENDERED"]
    assert isinstance(out, cupy.ndarray) and out.device.id == 0
    assert step.renderer.uses_interop, "the renderer fell back to host copies (see the log)"
    assert_close_to_cpu(cupy.asnumpy(out[0]), cpu_expected[f"{name}:MODE:{mode}"], mode)


def test_a_batch_of_eight_mixed_modes(step, test_images, cpu_expected):
    """One GL pass for eight frames in different modes; each equals its CPU picture."""
    import cupy

    name = "trump_hillary.jpg"
    modes = ["shaded", "depth", UV_MODE, "pncc", "landmarks", "pose", "normals", "shaded"]
    inputs = device_inputs(name, test_images, cpu_expected, copies=len(modes))
    out = step.run(inputs, [{RENDER_MODE_PARAMETER: m} for m in modes])["RENDERED"]
    assert isinstance(out, list) and len(out) == len(modes)
    for mode, picture in zip(modes, out, strict=True):
        assert_close_to_cpu(cupy.asnumpy(picture), cpu_expected[f"{name}:MODE:{mode}"], mode)


def test_one_mapping_each_way_per_batch(step, test_images, cpu_expected, monkeypatch):
    """Eight frames: one cudaGraphicsMapResources call for everything going in, one for the
    picture coming out (the old renderer mapped four times per frame)."""
    from cuda.bindings import runtime

    calls = []
    original = runtime.cudaGraphicsMapResources

    def count(n, resources, stream):
        calls.append(n)
        return original(n, resources, stream)

    monkeypatch.setattr(runtime, "cudaGraphicsMapResources", count)
    inputs = device_inputs("JianzhuGuo.jpg", test_images, cpu_expected, copies=8)
    step.run(inputs, [{}] * 8)  # warm: registrations made, buffers grown
    calls.clear()
    step.run(inputs, [{}] * 8)
    assert len(calls) == 2, f"{len(calls)} mappings for one batch ({calls})"
    assert calls == [3, 1]  # positions, normals, instances in; the drawing out (no uv frame)


def test_interop_equals_host_path_on_the_same_gpu(step, test_images, cpu_expected):
    import cupy

    name = "trump_hillary.jpg"
    device = device_inputs(name, test_images, cpu_expected)
    host = {k: cupy.asnumpy(v) for k, v in device.items()}
    for mode in ("shaded", "pncc", UV_MODE):
        parameters = [{RENDER_MODE_PARAMETER: mode}]
        on_device = cupy.asnumpy(step.run(device, parameters)["RENDERED"][0])
        on_host = step.run(host, parameters)["RENDERED"][0]  # numpy: glReadPixels path
        diff = np.abs(on_device.astype(int) - on_host.astype(int))
        # same GL; the normals are summed in another order (atomics), the layout differs
        assert (diff > 1).mean() < 1e-4, f"{mode}: interop and host paths differ"
    assert step.renderer.uses_interop


def test_zero_faces_copies_the_frames(step, test_images, cpu_expected):
    import cupy

    inputs = device_inputs("JianzhuGuo.jpg", test_images, cpu_expected, copies=2)
    inputs["NUM_FACES"] = cupy.zeros((2, 1), cupy.int32)
    out = step.run(inputs, [{}, {RENDER_MODE_PARAMETER: "depth"}])["RENDERED"]
    assert bool((out == inputs["IMAGE"]).all())


def test_frame_size_changes_reregister(step, test_images, cpu_expected):
    """Alternating frame sizes grow the GL targets; interop must follow."""
    import cupy

    for name in ("JianzhuGuo.jpg", "trump_hillary.jpg", "JianzhuGuo.jpg"):
        out = step.run(device_inputs(name, test_images, cpu_expected), [{}])["RENDERED"]
        assert_close_to_cpu(cupy.asnumpy(out[0]), cpu_expected[f"{name}:MODE:shaded"], name)
    assert step.renderer.uses_interop


def test_vertices_on_the_gpu_equal_the_cpu_ensemble(version, test_images, cpu_expected):
    import cupy

    from tddfa.render.step import build_vertices_step

    step = build_vertices_step(version)
    for name in SMALL:
        inputs = device_inputs(name, test_images, cpu_expected)
        del inputs["IMAGE"]
        out = step.run(inputs)["VERTICES"]
        assert isinstance(out, cupy.ndarray)
        want = cpu_expected[f"{name}:VERTICES"]
        got = cupy.asnumpy(out[0, : len(want)])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=0.05)
