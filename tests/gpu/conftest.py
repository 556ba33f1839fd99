"""Fixtures of the GPU suite: skipped as a whole without CUDA (CuPy + PyTorch CUDA).

- ``gpu_repository``: the GPU build (`tddfa build --device gpu`, fp16 networks); taken from
  $TDDFA_GPU_REPOSITORY when set (the device machine gets a prebuilt one), else built here.
- ``gpu_repository_fp32``: the same repository with the networks in fp32 (symlinks to its
  files, only the three network configs rewritten).
- ``gpu_server`` / ``gpu_server_fp32``: a tritonserver on each, gRPC only (the GPU machine
  has no HTTP client stack), with a CUDA memory pool for the tensors between steps.
- ``gpu_bls_repository`` / ``gpu_bls_server``: the GPU build with the networks as models that
  the steps call through BLS (`tddfa build --device gpu --networks models`; device tensors
  through DLPack both ways); $TDDFA_GPU_BLS_REPOSITORY when set, else built here.
- ``cpu_expected``: the CPU ensemble's outputs for the test images, written by
  ``tests/gpu/make_expected.py`` on a CPU machine ($TDDFA_GPU_EXPECTED, else
  build/gpu_expected.npz), so the device needs neither onnxruntime nor Mesa.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
POOL_MB = 4096  # Triton's CUDA memory pool per GPU for the step-to-step tensors


def _cuda_reason() -> str | None:
    """None when CuPy and PyTorch both see a CUDA device, else why not."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except Exception as exc:  # noqa: BLE001 - ImportError or a CUDA driver error
        return f"CuPy with a CUDA device is needed ({type(exc).__name__}: {exc})"
    try:
        import torch
    except ImportError:
        return "PyTorch is needed for the GPU networks"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _cuda_reason()
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(here):
            item.add_marker(pytest.mark.gpu)
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"GPU suite: {reason}"))


@pytest.fixture(scope="session")
def gpu_repository(asset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("TDDFA_GPU_REPOSITORY")
    if given:
        path = Path(given)
        if not (path / "tddfa" / "config.pbtxt").is_file():
            pytest.fail(f"TDDFA_GPU_REPOSITORY={given} is not a built model repository")
        return path
    from tddfa_tools.build.options import BuildOptions
    from tddfa_tools.build.repository import build_repository

    out = tmp_path_factory.mktemp("gpu") / "model_repository"
    return build_repository(
        BuildOptions(
            device="gpu",
            out=out,
            models_dir=REPO_ROOT / "build" / "models",
            asset_dir=asset_dir,
        )
    )


def fp32_variant(repository: Path, out: Path) -> Path:
    """``repository`` with every network precision set to fp32; other files are symlinks."""
    switched = 0
    for source in repository.rglob("*"):
        target = out / source.relative_to(repository)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif source.name == "config.pbtxt" and "_precision" in source.read_text():
            text = source.read_text()
            target.write_text(text.replace('string_value: "fp16"', 'string_value: "fp32"'))
            switched += 'string_value: "fp16"' in text
        elif "__pycache__" not in source.parts:
            target.symlink_to(source.resolve())
    if not switched:
        raise AssertionError(f"{repository} has no fp16 network precision to switch")
    return out


@pytest.fixture(scope="session")
def gpu_repository_fp32(gpu_repository: Path, tmp_path_factory) -> Path:
    return fp32_variant(gpu_repository, tmp_path_factory.mktemp("gpu32") / "model_repository")


def keep_full_log(server, label: str) -> None:
    """Append every line of ``server``'s log to $TDDFA_GPU_LOG_DIR/<label>-<port>.log when set:
    a request that never returns leaves its evidence there (the device copies the folder
    back); the fixtures keep only a tail in memory."""
    folder = os.environ.get("TDDFA_GPU_LOG_DIR")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"{label}-{server.grpc_port}.log"
    handle = path.open("a", encoding="utf-8", buffering=1)
    server.add_log_listener(handle.write)


def count_tracebacks(server) -> list[int]:
    """A one-item list that counts the Python tracebacks in ``server``'s log as they come."""
    count = [0]

    def listen(line: str) -> None:
        count[0] += line.startswith("Traceback (most recent call last)")

    server.add_log_listener(listen)
    return count


def _serve(repository: Path) -> Iterator[str]:
    from tddfa_tools.serve.cuda_mps import cuda_memory_pool_args
    from tddfa_tools.serve.server import TritonServer

    server = TritonServer(
        repository,
        startup_timeout=600,
        exit_timeout=5,
        # the layout to serve: one server per GPU (on a two-GPU machine an unpinned server
        # spans both, and requests crossing GPUs can stay in Triton 2.51: test_gpu_multi)
        gpus=[0],
        extra_args=cuda_memory_pool_args(POOL_MB, gpus=1),
        cuda_mps=os.environ.get("TDDFA_TEST_CUDA_MPS") == "1",  # the suite under MPS too
    )
    keep_full_log(server, repository.name)
    tracebacks = count_tracebacks(server)
    with server:
        yield server.grpc_url
        log = server.log_tail()
    # a healthy server logs no Python traceback (each was one per host output tensor when
    # the stub's DLPack capsules reached numpy's destructor: adapter.host_tensor_from_dlpack)
    if tracebacks[0]:
        pytest.fail(f"{tracebacks[0]} Python tracebacks in the server log; tail:\n{log}")
    # every python step must have loaded on the GPU, the renderer with interop
    if "interop failed" in log or "frames go through the host" in log:
        pytest.fail(f"the renderer fell back to host copies; server log:\n{log}")


@pytest.fixture(scope="module")
def gpu_server(gpu_repository: Path) -> Iterator[str]:
    """gRPC ``host:port`` of a server on the fp16 GPU build."""
    yield from _serve(gpu_repository)


@pytest.fixture(scope="module")
def gpu_server_fp32(gpu_repository_fp32: Path) -> Iterator[str]:
    yield from _serve(gpu_repository_fp32)


@pytest.fixture(scope="session")
def gpu_bls_repository(asset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("TDDFA_GPU_BLS_REPOSITORY")
    if given:
        return Path(given)
    from tddfa_tools.build.options import BuildOptions
    from tddfa_tools.build.repository import build_repository

    out = tmp_path_factory.mktemp("gpu_bls") / "model_repository"
    return build_repository(
        BuildOptions(
            device="gpu",
            networks="models",
            out=out,
            models_dir=REPO_ROOT / "build" / "models",
            asset_dir=asset_dir,
        )
    )


@pytest.fixture(scope="module")
def gpu_bls_server(gpu_bls_repository: Path) -> Iterator[str]:
    yield from _serve(gpu_bls_repository)


@pytest.fixture(scope="session")
def cpu_expected() -> dict[str, np.ndarray]:
    path = Path(os.environ.get("TDDFA_GPU_EXPECTED") or REPO_ROOT / "build" / "gpu_expected.npz")
    if not path.is_file():
        pytest.skip(
            f"CPU outputs {path} missing: run `.venv/bin/python tests/gpu/make_expected.py "
            f"--out {path}` on a CPU machine (or set TDDFA_GPU_EXPECTED)"
        )
    with np.load(path) as data:
        return dict(data)


@pytest.fixture(scope="session")
def test_images(asset_dir: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {
        path.name: np.asarray(Image.open(path).convert("RGB"))
        for path in sorted((asset_dir / "images").glob("*.jpg"))
    }
