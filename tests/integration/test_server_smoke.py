"""The serving machinery (tools/serve/server.py, tests/server.py) against the toy repository:
echo -> double ensemble on a real embedded tritonserver, errors, liveness, metrics."""

from __future__ import annotations

import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from server import OWNED_PREFIXES, OWNED_SHM_PREFIX, SHM_DIR, ServerPool, model_counts
from tritonclient.utils import InferenceServerException

from tddfa_tools.serve import embedded
from tddfa_tools.serve.server import TritonServer, free_port

TOY_REPOSITORY = Path(__file__).resolve().parent / "toy_repository"
CLIENTS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module")
def model_repository() -> Path:
    """This module always serves the toy repository, whatever the default is."""
    return TOY_REPOSITORY


def infer(server, protocol: str, data: np.ndarray, model: str = "echo_double") -> np.ndarray:
    """One request of ``data`` (B, N) float32; returns OUTPUT (B, N)."""
    module = CLIENTS[protocol]
    url = server.http_url if protocol == "http" else server.grpc_url
    with module.InferenceServerClient(url) as client:
        tensor = module.InferInput("INPUT", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        return client.infer(model, [tensor]).as_numpy("OUTPUT")


def server_ready(server, protocol: str) -> bool:
    module = CLIENTS[protocol]
    url = server.http_url if protocol == "http" else server.grpc_url
    with module.InferenceServerClient(url) as client:
        return client.is_server_live() and client.is_server_ready()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ensemble_runs_both_steps(triton_server, protocol):
    data = np.array([[1.0, 2.5, 3.0], [0.0, 4.0, 8.0]], np.float32)
    np.testing.assert_array_equal(infer(triton_server, protocol, data), 2 * data)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_error_reaches_client_and_server_keeps_serving(triton_server, protocol):
    with pytest.raises(
        InferenceServerException, match="INPUT must be non-negative, got minimum -1"
    ):
        infer(triton_server, protocol, np.array([[1.0, -1.0]], np.float32))
    assert server_ready(triton_server, protocol)
    good = np.array([[5.0, 6.0]], np.float32)
    np.testing.assert_array_equal(infer(triton_server, protocol, good), 2 * good)


def test_bad_request_does_not_fail_its_batch_mates(triton_server):
    """The repository's real adapter (tddfa_triton.StepModel, adapter_batch) in a real stub:
    concurrent requests share execute() calls (Triton's statistics prove it), and only the
    bad ones fail, with their own message; every good one gets its own right answer."""
    inferences, executions = model_counts(triton_server, "adapter_batch")

    def one(i: int):
        data = np.full((1, 4), -float(i) if i % 3 == 0 else float(i), np.float32)
        module = CLIENTS["grpc"]
        with module.InferenceServerClient(triton_server.grpc_url) as client:
            tensor = module.InferInput("X", [1, 4], "FP32")
            tensor.set_data_from_numpy(data)
            try:
                return client.infer("adapter_batch", [tensor]).as_numpy("Y")
            except InferenceServerException as exc:
                return exc

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(1, 17)))
    for i, result in enumerate(results, start=1):
        if i % 3 == 0:
            assert isinstance(result, InferenceServerException), f"request {i} should fail"
            assert f"adapter_batch: X must be >= 0, got -{i}" in str(result)
        else:
            assert not isinstance(result, Exception), f"request {i} failed: {result}"
            np.testing.assert_array_equal(result, np.full((1, 4), i / 2, np.float32))
    after_inferences, after_executions = model_counts(
        triton_server, "adapter_batch", inferences + 16
    )
    assert after_inferences - inferences == 16
    assert after_executions - executions < 16, "no two requests shared an execute()"


def test_metrics_endpoint_counts_requests(triton_server):
    infer(triton_server, "http", np.ones((1, 2), np.float32))
    with urllib.request.urlopen(triton_server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert response.status == 200
    assert 'nv_inference_request_success{model="echo_double"' in text


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_missing_wheel_names_the_fix(monkeypatch):

    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        embedded.TritonServerError, match="nvidia-pytriton is not installed: run tools/setup.sh"
    ):
        embedded.tritonserver_dist()


def test_missing_stub_names_the_python_version(tmp_path):
    dist = tmp_path / "tritonserver"
    (dist / "python_backend_stubs" / "3.8").mkdir(parents=True)
    with pytest.raises(
        embedded.TritonServerError,
        match=rf"no Python backend stub for Python {embedded.python_tag()}",
    ):
        embedded.prepare_backends(dist, cache_root=tmp_path / "cache")


def test_backends_are_copied_once_with_the_stub(tmp_path):
    dist = tmp_path / "tritonserver"
    (dist / "backends" / "python").mkdir(parents=True)
    (dist / "backends" / "python" / "libtriton_python.so").write_bytes(b"lib")
    stub_dir = dist / "python_backend_stubs" / embedded.python_tag()
    stub_dir.mkdir(parents=True)
    (stub_dir / "triton_python_backend_stub").write_bytes(b"stub")
    first = embedded.prepare_backends(dist, cache_root=tmp_path / "cache")
    assert (first / "python" / "triton_python_backend_stub").read_bytes() == b"stub"
    assert (first / "python" / "libtriton_python.so").is_file()
    assert embedded.prepare_backends(dist, cache_root=tmp_path / "cache") == first
    assert [p.name for p in first.parent.iterdir()] == ["backends"], "staging dirs left behind"


def test_start_failure_reports_the_model_error(tmp_path):
    """A model that fails to load stops start-up with Triton's message, not a timeout."""
    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        (TOY_REPOSITORY / "double" / "config.pbtxt").read_text().replace('"double"', '"broken"')
    )
    (model / "1" / "model.py").write_text(
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise RuntimeError('toy model refuses to load')\n"
    )
    server = TritonServer(model.parent, startup_timeout=60)
    with pytest.raises(embedded.TritonServerError, match="toy model refuses to load"):
        server.start()
    assert not server.is_alive()


def test_leak_check_finds_owned_regions():
    """Server-side and client-side names of this process count as leaks; the client name is
    the one FrameClient really gives its regions (not a made-up prefix)."""
    if not SHM_DIR.is_dir():
        pytest.skip("no /dev/shm on this host")
    from tddfa_clients.triton_client import client_shm_prefix

    pool = ServerPool()
    regions = [
        SHM_DIR / f"{OWNED_SHM_PREFIX}leak_check_test",
        SHM_DIR / f"{client_shm_prefix()}leak_check_test_0_input",
        SHM_DIR / f"{client_shm_prefix(os.getpid() + 1)}someone_else",  # another process
    ]
    for region in regions:
        region.write_bytes(b"")
    try:
        assert pool.close() == sorted(r.name for r in regions[:2])
    finally:
        for region in regions:
            region.unlink(missing_ok=True)


def test_client_regions_carry_the_leak_check_prefix(triton_server):
    """The regions a FrameClient registers are the ones the session leak check looks for."""
    from tddfa_clients.shared_memory import SharedMemorySlot
    from tddfa_clients.triton_client import Transport, client_shm_prefix

    protocol = Transport("http", triton_server.http_url, 1, 10.0)
    try:
        slot = SharedMemorySlot(protocol, f"{client_shm_prefix()}probe")
        name = slot.ensure("input", 64)
        assert (SHM_DIR / name).exists() and name.startswith(OWNED_PREFIXES)
        slot.close()
        assert not (SHM_DIR / name).exists()
    finally:
        protocol.close()
