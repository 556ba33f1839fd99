"""The python flavour reaches the TensorRT runner: engines built from model.onnx at load,
cached per GPU / TensorRT / ONNX / profile under a lock (tddfa.engine_cache), against a
stand-in tensorrt module; the real build where TensorRT and a GPU exist."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from tddfa import engine_cache, runners
from tddfa.config import PipelineConfig
from tddfa.runners import choice
from tddfa_tools.build import tensorrt_builder

PROFILE = {"CROPS": ((1, 1, 3, 120, 120), (1, 8, 3, 120, 120), (8, 8, 3, 120, 120))}


class _FakeBuilds:
    """Stands in for tensorrt_builder.build_engine: writes a plan named as it would."""

    def __init__(self, delay: float = 0.0, fail: str | None = None):
        self.calls: list[tuple[Path, dict, bool]] = []
        self.delay, self.fail = delay, fail

    def __call__(self, onnx_path, out_dir, *, profiles, fp16, timing_cache, device):
        self.calls.append((Path(out_dir), dict(profiles), fp16))
        if self.fail:
            raise RuntimeError(self.fail)
        time.sleep(self.delay)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        precision = "fp16" if fp16 else "fp32"
        path = out_dir / f"{Path(onnx_path).stem}.H200.trt10.3.0.{precision}.plan"
        path.write_bytes(b"PLAN")
        return path


@pytest.fixture()
def fake_trt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(tensorrt_builder, "gpu_name", lambda device=0: "NVIDIA H200")
    builds = _FakeBuilds()
    monkeypatch.setattr(tensorrt_builder, "build_engine", builds)
    return builds


@pytest.fixture()
def version_dir(tmp_path) -> Path:
    folder = tmp_path / "face_regressor" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx bytes")
    return folder


def test_profiles_round_trip(version_dir):
    assert engine_cache.read_profiles(version_dir) is None
    engine_cache.write_profiles(version_dir, PROFILE)
    assert engine_cache.read_profiles(version_dir) == PROFILE
    (version_dir / engine_cache.PROFILES_FILE).write_text('{"CROPS": [[1, 1]]}')
    with pytest.raises(ValueError, match=r"\[min, opt, max\]"):
        engine_cache.read_profiles(version_dir)


def test_engine_is_built_once_then_reused(fake_trt, version_dir):
    onnx = version_dir / "model.onnx"
    first = engine_cache.cached_engine(onnx, PROFILE, fp16=True)
    again = engine_cache.cached_engine(onnx, PROFILE, fp16=True)
    assert first == again and len(fake_trt.calls) == 1
    assert first.name == "model.H200.trt10.3.0.fp16.plan"
    assert first.parent.parent == version_dir / "engines"  # the writable version folder
    # another precision, profile or ONNX content is another engine
    engine_cache.cached_engine(onnx, PROFILE, fp16=False)
    wider = {"CROPS": (PROFILE["CROPS"][0], PROFILE["CROPS"][1], (16, 8, 3, 120, 120))}
    engine_cache.cached_engine(onnx, wider, fp16=True)
    onnx.write_bytes(b"re-exported onnx")
    rebuilt = engine_cache.cached_engine(onnx, PROFILE, fp16=True)
    assert len(fake_trt.calls) == 4 and rebuilt != first
    assert len({call[0] for call in fake_trt.calls}) == 4


def test_concurrent_loads_build_once(fake_trt, version_dir):
    """Two instances loading at once: one builds, the other waits for it and reuses it."""
    fake_trt.delay = 0.3
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                engine_cache.cached_engine(version_dir / "model.onnx", PROFILE, fp16=True)
            )
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_trt.calls) == 1 and len(set(results)) == 1


def test_read_only_repository_caches_in_home(monkeypatch, tmp_path, version_dir):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")
    assert engine_cache.default_cache_dir(version_dir) == (
        tmp_path / "home" / ".cache" / "tddfa" / "engines" / "face_regressor"
    )


class _FakeTensorRTRunner:
    def __init__(self, plan, device):
        self.plan, self.device = Path(plan), device


def test_make_runner_reaches_tensorrt_from_onnx(fake_trt, monkeypatch, version_dir, caplog):
    monkeypatch.setattr(choice, "tensorrt_available", lambda: True)
    monkeypatch.setattr(choice, "TensorRTRunner", _FakeTensorRTRunner)
    engine_cache.write_profiles(version_dir, PROFILE)
    with caplog.at_level(logging.INFO, logger="tddfa"):
        runner = runners.make_runner(version_dir, "cuda:0", fp16=False)
    assert isinstance(runner, _FakeTensorRTRunner) and runner.device == "cuda:0"
    assert runner.plan.name == "model.H200.trt10.3.0.fp32.plan" and runner.plan.is_file()
    assert fake_trt.calls[0][1] == PROFILE
    assert "TensorRT runner on cuda:0" in caplog.text
    # a profile given by the caller wins over the file
    given = {"CROPS": (PROFILE["CROPS"][0],) * 3}
    runners.make_runner(version_dir, "cuda:0", fp16=False, tensorrt_profile=given)
    assert fake_trt.calls[-1][1] == given


def test_a_plan_in_the_folder_is_used_as_it_is(fake_trt, monkeypatch, version_dir):
    monkeypatch.setattr(choice, "tensorrt_available", lambda: True)
    monkeypatch.setattr(choice, "TensorRTRunner", _FakeTensorRTRunner)
    (version_dir / "model.plan").write_bytes(b"PLAN")
    runner = runners.make_runner(version_dir, "cuda:0")
    assert runner.plan == version_dir / "model.plan" and fake_trt.calls == []


@pytest.mark.parametrize("problem", ["no-profile", "build-fails"])
def test_make_runner_falls_back_when_no_engine(fake_trt, monkeypatch, version_dir, caplog, problem):
    monkeypatch.setattr(choice, "tensorrt_available", lambda: True)
    monkeypatch.setattr(choice, "TensorRTRunner", _FakeTensorRTRunner)
    monkeypatch.setattr(choice, "_torch_cuda_available", lambda: False)
    fallback = object()
    monkeypatch.setattr(choice, "OnnxRuntimeRunner", lambda path, device, threads: fallback)
    if problem == "build-fails":
        engine_cache.write_profiles(version_dir, PROFILE)
        fake_trt.fail = "node 3: unsupported op Foo"
    with caplog.at_level(logging.INFO, logger="tddfa"):
        assert runners.make_runner(version_dir, "cuda:0") is fallback
    expected = "unsupported op Foo" if problem == "build-fails" else "tensorrt_profiles.json"
    assert expected in caplog.text and "using the next runner" in caplog.text


# ---- the real thing (TensorRT builder + CUDA GPU) ----------------------------------------

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT builder not installed")
@pytest.mark.gpu
def test_python_flavour_folder_runs_on_a_built_engine(onnx_models, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need a CUDA GPU")
    folder = tmp_path / "face_regressor" / "1"
    folder.mkdir(parents=True)
    os.symlink(onnx_models["face_regressor"], folder / "model.onnx")
    profile = tensorrt_builder.default_profiles(PipelineConfig(), 4)["face_regressor"]
    engine_cache.write_profiles(folder, profile)
    runner = runners.make_runner(folder, "cuda:0", fp16=False)
    assert isinstance(runner, runners.TensorRTRunner)
    crops = np.random.default_rng(0).uniform(0, 255, (2, 3, 3, 120, 120)).astype(np.float32)
    got = runner.run({"CROPS": crops})["PARAMS_NORM"]
    want = runners.OnnxRuntimeRunner(folder / "model.onnx").run({"CROPS": crops})["PARAMS_NORM"]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-3
    again = runners.make_runner(folder, "cuda:0", fp16=False)  # reused, not rebuilt
    assert again.path == runner.path
