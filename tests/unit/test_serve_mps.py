"""tddfa serve --cuda-mps: a private MPS daemon (pipe/log folders of its own) started before
the server and quit after it, here with a stand-in nvidia-cuda-mps-control."""

from __future__ import annotations

import argparse
import stat

import pytest

from tddfa_tools.serve.command import _gpu_list
from tddfa_tools.serve.cuda_mps import CudaMps, MpsError, cuda_memory_pool_args, visible_gpu_count
from tddfa_tools.serve.server import TritonServer


@pytest.fixture()
def fake_control(tmp_path, monkeypatch):
    calls = tmp_path / "calls.log"
    script = tmp_path / "bin" / "nvidia-cuda-mps-control"
    script.parent.mkdir()
    script.write_text(
        f'#!/bin/sh\necho "$* pipe=$CUDA_MPS_PIPE_DIRECTORY stdin=$(cat)" >> {calls}\n'
        'test "$FAIL_MPS" != 1 || exit 1\n'
        # the real daemon creates its control pipe once it listens
        'test "$NO_PIPE" = 1 || touch "$CUDA_MPS_PIPE_DIRECTORY/control"\n'
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


def test_daemon_without_control_pipe_is_a_warning(fake_control, monkeypatch, caplog):
    monkeypatch.setenv("NO_PIPE", "1")
    monkeypatch.setattr(CudaMps, "READY_TIMEOUT", 0.2)
    mps = CudaMps()
    with caplog.at_level("WARNING"):
        mps.start()
    mps.stop()
    assert "may run without MPS" in caplog.text


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


def test_daemon_sees_the_servers_gpus(fake_control):
    """A server restricted to GPUs gets a daemon restricted to the same GPUs (a client
    may only use devices its daemon sees); the clients number them as the daemon shows
    them, 0..n-1 (the physical numbers found no GPU under MPS on a two-GPU machine)."""
    script = fake_control.parent / "bin" / "nvidia-cuda-mps-control"
    script.write_text(
        f'#!/bin/sh\necho "$* visible=$CUDA_VISIBLE_DEVICES" >> {fake_control}\n'
        'mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" && touch "$CUDA_MPS_PIPE_DIRECTORY/control"\n'
    )
    mps = CudaMps(devices=[1, 0])
    env = mps.start()
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    mps.stop()
    assert fake_control.read_text().splitlines() == ["-d visible=1,0", " visible=0,1"]


def test_daemon_log_failures_are_reported(fake_control, caplog):
    mps = CudaMps()
    mps.start()
    (mps.directory / "log" / "server.log").write_text(
        "[2026-11-30] INFO started\n[2026-11-30] ERROR client limit exceeded\n"
    )
    assert mps.log_problems() == ["server.log: [2026-11-30] ERROR client limit exceeded"]
    with caplog.at_level("WARNING"):
        mps.stop()
    assert "client limit exceeded" in caplog.text


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, 4),  # unset: every GPU of the host
        ("1", 1),
        ("2,0", 2),
        ("", 0),
        ("0,7,1", 1),  # CUDA stops at the first invalid entry (7 of 4 GPUs)
        ("GPU-0b1c,1", 2),
    ],
)
def test_visible_gpu_count_reads_cuda_visible_devices(visible, expected):
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert visible_gpu_count(environ, host_gpus=4) == expected


def test_pool_flags_follow_the_visible_gpus(monkeypatch):
    """A server pinned to GPU 1 sees one device, numbered 0: no flag for a device 1 it
    cannot see (Triton refuses that)."""
    monkeypatch.setattr("tddfa_tools.serve.cuda_mps.gpu_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert cuda_memory_pool_args(4) == ["--cuda-memory-pool-byte-size=0:4194304"]


def test_gpu_list_argument():
    assert _gpu_list("0,1") == (0, 1)
    for bad in ("0,0", "-1", "a", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="--gpus"):
            _gpu_list(bad)


def test_server_environment_pins_gpus(tmp_path, monkeypatch):
    """TritonServer(gpus=...) hands CUDA_VISIBLE_DEVICES to the server process."""
    seen = {}

    class Stop(Exception):
        pass

    def fake_popen(cmd, env, **kwargs):
        seen.update(env)
        raise Stop

    (tmp_path / "repo").mkdir()
    monkeypatch.setattr("tddfa_tools.serve.server.tritonserver_dist", lambda: tmp_path)
    monkeypatch.setattr("tddfa_tools.serve.server.prepare_backends", lambda dist: tmp_path)
    monkeypatch.setattr("tddfa_tools.serve.server.server_environment", lambda dist: {"A": "1"})
    monkeypatch.setattr("subprocess.Popen", fake_popen)
    with pytest.raises(Stop):
        TritonServer(tmp_path / "repo", gpus=[1]).start()
    assert seen["CUDA_VISIBLE_DEVICES"] == "1" and seen["A"] == "1"


def _repository(tmp_path, kind: str):
    (tmp_path / "face_detector").mkdir()
    (tmp_path / "face_detector" / "config.pbtxt").write_text(
        f'name: "face_detector"\ninstance_group [{{ kind: {kind} count: 2 }}]\n'
    )
    return tmp_path


def test_one_server_over_several_gpus_is_warned_about(tmp_path, monkeypatch):
    from tddfa_tools.serve import command as serve_command

    gpu_build = _repository(tmp_path, "KIND_GPU")
    warning = serve_command.spanning_gpus_warning(gpu_build, (0, 1))
    assert "one server over 2 GPUs" in warning and "--gpus 0" in warning
    assert serve_command.spanning_gpus_warning(gpu_build, (1,)) is None
    # no --gpus: every GPU the server would see
    monkeypatch.setattr(serve_command, "visible_gpu_count", lambda: 4)
    assert "one server over 4 GPUs" in serve_command.spanning_gpus_warning(gpu_build, None)
    monkeypatch.setattr(serve_command, "visible_gpu_count", lambda: 1)
    assert serve_command.spanning_gpus_warning(gpu_build, None) is None


def test_a_cpu_build_is_not_warned_about_gpus(tmp_path, monkeypatch):
    from tddfa_tools.serve import command as serve_command

    monkeypatch.setattr(serve_command, "visible_gpu_count", lambda: 2)
    assert serve_command.spanning_gpus_warning(_repository(tmp_path, "KIND_CPU"), None) is None
