"""Clients stopped by a signal clean up like Ctrl-C: a real `tddfa video` process is sent
SIGTERM or SIGHUP mid-video (no staging file left, its shared-memory regions unregistered
and unlinked, its sequence ended, exit 128 + signal); one killed with SIGKILL leaves its
regions behind, and the next client reaps them (file and server registration)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from tddfa_clients.triton_client import client_shm_prefix
from tddfa_tools.serve.stubs import regions

pytestmark = pytest.mark.server

START_WITHIN_S = 90  # CPU box under load: start-up, first frames, regions registered
SEQUENCE_IDLE_S = 10  # face_tracker's max_sequence_idle_microseconds


def _open_sequences(server) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tddfa_open_sequences{")
    )


def _wait(condition, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _registered(server) -> list[str]:
    """Every system shared-memory region registered on the server."""
    headers = server.process.admin_headers("grpc")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return list(client.get_system_shared_memory_status(headers=headers).regions)


def _start_video(server, asset_dir: Path, out: Path) -> subprocess.Popen:
    """`tddfa video` (tracked: one sequence, system shared memory: the server is local),
    returned once it is sending frames: its staging file exists and an output region is
    registered on the server (the first frame has replaced the probe's small input region,
    so no region is between create and register, or unregister and destroy)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tddfa_tools.cli", "video",
         str(asset_dir / "video" / "emma720.mp4"), str(out),
         "--url", server.grpc_url, "--protocol", "grpc", "--shared-memory", "system"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    prefix = client_shm_prefix(process.pid)
    _wait(
        lambda: (
            process.poll() is not None
            or (
                regions(prefix)
                and list(out.parent.glob(f".{out.stem}*.part*"))
                and any(n.startswith(prefix) and n.endswith("_output") for n in _registered(server))
            )
        ),
        START_WITHIN_S,
        "the video client did not start sending frames",
    )
    assert process.poll() is None, process.communicate()[0].decode()[-2000:]
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_mid_video_cleans_up_like_ctrl_c(ensemble_server, asset_dir, tmp_path, signum):
    _wait(lambda: _open_sequences(ensemble_server) == 0, SEQUENCE_IDLE_S + 5, "sequences open")
    out = tmp_path / "emma.mp4"
    process = _start_video(ensemble_server, asset_dir, out)
    process.send_signal(signum)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 128 + signum, output[-2000:]
    assert list(tmp_path.iterdir()) == [], "a staging file or a partial output was left"
    prefix = client_shm_prefix(process.pid)
    assert regions(prefix) == []
    assert [name for name in _registered(ensemble_server) if name.startswith(prefix)] == []
    # ended by the client, well before the idle timeout would have freed it
    _wait(lambda: _open_sequences(ensemble_server) == 0, 3, "the sequence was not ended")


def test_regions_of_a_killed_client_are_reaped_by_the_next(ensemble_server, asset_dir, tmp_path):
    killed = _start_video(ensemble_server, asset_dir, tmp_path / "killed.mp4")
    prefix = client_shm_prefix(killed.pid)
    killed.kill()  # SIGKILL: no cleanup at all
    killed.communicate(timeout=30)
    left = regions(prefix)
    assert left and {n for n in _registered(ensemble_server) if n.startswith(prefix)}
    survivor = _start_video(ensemble_server, asset_dir, tmp_path / "next.mp4")
    try:
        assert regions(prefix) == []
        assert [n for n in _registered(ensemble_server) if n.startswith(prefix)] == []
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.communicate(timeout=60)
