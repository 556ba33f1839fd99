"""tddfa serve --cuda-mps: a private MPS daemon (pipe/log folders of its own) started before
the server and quit after it, here with a stand-in nvidia-cuda-mps-control."""

from __future__ import annotations

import stat

import pytest

from tddfa_tools.cuda_mps import CudaMps, MpsError, cuda_memory_pool_args


@pytest.fixture()
def fake_control(tmp_path, monkeypatch):
    calls = tmp_path / "calls.log"
    script = tmp_path / "bin" / "nvidia-cuda-mps-control"
    script.parent.mkdir()
    script.write_text(
        f'#!/bin/sh\necho "$* pipe=$CUDA_MPS_PIPE_DIRECTORY stdin=$(cat)" >> {calls}\n'
        'test "$FAIL_MPS" != 1\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    return calls


def test_daemon_started_and_quit_with_private_folders(fake_control):
    mps = CudaMps()
    env = mps.start()
    pipe = env["CUDA_MPS_PIPE_DIRECTORY"]
    assert pipe.endswith("/pipe") and env["CUDA_MPS_LOG_DIRECTORY"].endswith("/log")
    mps.stop()
    lines = fake_control.read_text().splitlines()
    assert lines == [f"-d pipe={pipe} stdin=", f" pipe={pipe} stdin=quit"]
    assert mps.environment() == {}


def test_failed_start_names_the_log(fake_control, monkeypatch):
    monkeypatch.setenv("FAIL_MPS", "1")
    with pytest.raises(MpsError, match="failed with status 1: see .*/log"):
        CudaMps().start()


def test_missing_binary_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("shutil.which", lambda *a, **k: None)
    with pytest.raises(MpsError, match="nvidia-cuda-mps-control"):
        CudaMps()


def test_memory_pool_flags_per_gpu():
    assert cuda_memory_pool_args(None) == []
    assert cuda_memory_pool_args(2, gpus=2) == [
        "--cuda-memory-pool-byte-size=0:2097152",
        "--cuda-memory-pool-byte-size=1:2097152",
    ]
    with pytest.raises(ValueError, match=">= 0"):
        cuda_memory_pool_args(-1, gpus=1)
