"""Two real tritonservers behind one name, as a Kubernetes headless Service presents them.

The servers listen on two loopback addresses (127.0.0.2 and 127.0.0.3) with the same ports;
the name ``tddfa-replicas.test`` resolves to both through a resolver stub this test controls
(``socket.getaddrinfo`` answers for that name only). The batch client is given the name,
spreads the frames over both servers, and finishes every file although one server is
killed (SIGKILL, no goodbye) in the middle of the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from server import OWNED_SHM_PREFIX, SHM_DIR, wait_until_ready

# the stand-in `tddfa` model (the ensemble's contract, no networks) of the client tests
from test_clients import (
    L2V_CONFIG,
    L2V_MODEL,
    STANDIN_CONFIG,
    STANDIN_MODEL,
    TRACK_CONFIG,
    TRACK_MODEL,
    _write_model,
)

from tddfa_clients.batch import Settings, run_batch
from tddfa_clients.batch_manifest import MANIFEST, Manifest
from tddfa_clients.video_io import probe
from tddfa_tools.serve.embedded import TritonServerError
from tddfa_tools.serve.server import TritonServer

pytestmark = pytest.mark.server

NAME = "tddfa-replicas.test"
ADDRESSES = ("127.0.0.2", "127.0.0.3")
VIDEOS = 4
FRAMES = 50  # two_faces_360p.mp4


def _free_on_all(addresses: tuple[str, ...], taken: set[int]) -> int:
    """A TCP port free on every address (a headless Service's pods share the port)."""
    for _ in range(50):
        with socket.socket() as probe_socket:
            probe_socket.bind((addresses[0], 0))
            port = probe_socket.getsockname()[1]
        if port in taken:
            continue
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        taken.add(port)
        return port
    raise RuntimeError(f"no port free on all of {addresses}")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """{address: TritonServer} serving the stand-in model on the same ports."""
    root = tmp_path_factory.mktemp("replica_repository")
    _write_model(root, "tddfa", STANDIN_CONFIG, STANDIN_MODEL)
    _write_model(root, "face_aligner", L2V_CONFIG, L2V_MODEL)
    _write_model(root, "tddfa_track", TRACK_CONFIG, TRACK_MODEL)  # videos are tracked
    taken: set[int] = set()
    try:
        ports = {
            k: _free_on_all(ADDRESSES, taken) for k in ("http_port", "grpc_port", "metrics_port")
        }
    except (OSError, RuntimeError) as exc:  # a sandbox with 127.0.0.1 only
        pytest.skip(f"cannot bind the loopback addresses {ADDRESSES}: {exc}")
    servers = {
        address: TritonServer(
            root, host=address, shm_prefix=f"{OWNED_SHM_PREFIX}replica{i}_", exit_timeout=5, **ports
        )
        for i, address in enumerate(ADDRESSES)
    }
    try:
        for server in servers.values():
            server.start()
            wait_until_ready(server)
    except TritonServerError as exc:
        for server in servers.values():
            server.stop()
        pytest.skip(f"embedded tritonserver unavailable: {exc}")
    yield servers
    for server in servers.values():
        server.stop()
    # A SIGKILLed tritonserver leaves its Python stubs running (orphans that ignore SIGTERM,
    # seen with Triton 2.51) and its /dev/shm regions behind: end those this test made.
    for i in range(len(ADDRESSES)):
        prefix = f"{OWNED_SHM_PREFIX}replica{i}_"
        for pid in stub_pids(prefix):
            os.kill(pid, signal.SIGKILL)
        for leftover in SHM_DIR.glob(f"{prefix}*"):
            leftover.unlink(missing_ok=True)


def stub_pids(shm_prefix: str) -> list[int]:
    """Python-backend stub processes of the server whose regions start with ``shm_prefix``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"triton_python_backend_stub") and any(
            a.startswith(shm_prefix.encode()) for a in argv
        ):
            found.append(int(proc.name))
    return found


@pytest.fixture()
def resolver_stub(monkeypatch):
    """``NAME`` resolves to every replica address; other names as usual."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == NAME:
            tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
            return [(*tcp, (address, int(port))) for address in ADDRESSES]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def frames_served(server: TritonServer) -> int:
    """Successful `tddfa` requests so far, from the server's Prometheus metrics."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith('nv_inference_request_success{model="tddfa"'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def test_batch_spreads_over_a_name_and_survives_a_killed_replica(
    replicas, resolver_stub, asset_dir: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(VIDEOS):
        shutil.copy(asset_dir / "video" / "two_faces_360p.mp4", inputs / f"v{i}.mp4")
    out = tmp_path / "out"
    victim, survivor = (replicas[a] for a in ADDRESSES)
    port = victim.grpc_port
    # detect mode: frames of one video spread over both replicas (a tracked video is one
    # sequence and stays on one replica: tests/unit/test_endpoints.py)
    settings = Settings(
        protocol="grpc", in_flight=4, retries=10, backoff=0.3, backoff_max=2, mode="detect"
    )
    counts: dict = {}
    failure: list[BaseException] = []

    def batch() -> None:
        try:
            counts.update(run_batch([str(inputs)], out, [f"{NAME}:{port}"], 2, settings=settings))
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            failure.append(exc)

    worker = threading.Thread(target=batch)
    worker.start()
    deadline = time.monotonic() + 120
    while frames_served(victim) < 10:  # both replicas are in use before the kill
        assert time.monotonic() < deadline and worker.is_alive(), "the batch never reached it"
        time.sleep(0.05)
    assert frames_served(survivor) > 0, "frames were not spread over both addresses"
    served_at_kill = frames_served(victim)
    os.kill(victim.pid, signal.SIGKILL)  # mid-run, without a chance to answer
    worker.join(timeout=300)
    assert not worker.is_alive() and not failure, failure
    assert counts["done"] == VIDEOS and counts["failed"] == 0, counts
    assert counts["frames"] == VIDEOS * FRAMES
    records = Manifest(out / MANIFEST).records.values()
    assert sorted(Path(r["input"]).name for r in records if r["status"] == "done") == [
        f"v{i}.mp4" for i in range(VIDEOS)
    ]
    for record in records:
        assert probe(record["output"]).frame_count == FRAMES == record["frames"]
    assert not victim.is_alive()
    # the survivor took over: every frame the victim had not answered when it was killed
    # (at most `in flight` more than read just before the kill) went to the survivor
    in_flight = 2 * settings.in_flight  # two files at a time
    assert frames_served(survivor) + served_at_kill >= VIDEOS * FRAMES - in_flight
