"""`tddfa serve` processes on one host: the ports follow --http-port (two servers side by
side with one option each), a taken port stops a start before any model loads and is named
with its option, port 0 is any free port and is printed; a non-loopback --host puts the guard
in front (tritonserver on loopback) unless --expose-triton."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

TOY_REPOSITORY = Path(__file__).resolve().parent / "toy_repository"


def _free_block(size: int = 4) -> int:
    """A port N with N..N+size-1 free right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65535:
            continue
        try:
            for port in range(base, base + size):
                with socket.socket() as other:
                    other.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base
    raise AssertionError("no block of free ports")


def _start(log: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tddfa_tools.cli", "serve", "--model-repository",
         str(TOY_REPOSITORY), "--canary-interval", "0", *options],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _status(url: str, method: str = "GET", body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _wait_healthy(process: subprocess.Popen, log: Path, supervisor_url: str) -> None:
    deadline = time.monotonic() + 120
    while _status(f"{supervisor_url}/health") != 200:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "tddfa serve not healthy in 120 s"
        time.sleep(0.25)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0


def test_two_servers_side_by_side_and_a_third_refused(tmp_path: Path) -> None:
    first, second = _free_block(), _free_block()
    servers = [
        (_start(tmp_path / f"{n}.log", "--http-port", str(port)), tmp_path / f"{n}.log", port)
        for n, port in (("first", first), ("second", second))
    ]
    try:
        for process, log, port in servers:  # each supervisor on its HTTP port + 3
            _wait_healthy(process, log, f"http://127.0.0.1:{port + 3}")
            assert _status(f"http://127.0.0.1:{port}/v2/health/ready") == 200
            assert _status(f"http://127.0.0.1:{port + 2}/metrics") == 200
        log = tmp_path / "third.log"
        third = _start(log, "--http-port", str(first))
        assert third.wait(timeout=60) == 1
        text = log.read_text()
        assert f"tddfa: error: port {first} (--http-port) on 127.0.0.1 is in use" in text
        assert "starting" not in text, "tritonserver was started before the ports were checked"
    finally:
        for process, _, _ in servers:
            _stop(process)


def test_port_0_is_any_free_port_and_is_printed(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    process = _start(log, "--http-port", "0")
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"supervisor (http://127\.0\.0\.1:\d+)", log.read_text())):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no supervisor address in the log"
            time.sleep(0.25)
        _wait_healthy(process, log, found[1])
    finally:
        _stop(process)


def test_a_public_address_gets_the_guard_in_front(tmp_path: Path) -> None:
    port = _free_block()
    log = tmp_path / "serve.log"
    process = _start(log, "--host", "0.0.0.0", "--http-port", str(port))
    try:
        _wait_healthy(process, log, f"http://127.0.0.1:{port + 3}")
        public = f"http://127.0.0.1:{port}"
        assert _status(f"{public}/v2/health/ready") == 200  # forwarded
        assert _status(f"{public}/v2/repository/index", "POST", b"{}") == 403  # guard's refusal
        poison = {"inputs": [{"name": "INPUT", "shape": [1, 60000 * 60000],
                              "datatype": "FP32", "data": [1.0]}]}  # fmt: skip
        assert _status(f"{public}/v2/models/echo/infer", "POST", json.dumps(poison).encode()) in (
            400,
            413,
        )
        triton = re.search(r"tritonserver ready: http (127\.0\.0\.1:\d+)", log.read_text())
        assert triton and triton[1] != f"127.0.0.1:{port}", "tritonserver is not on loopback"
        assert _status(f"http://{triton[1]}/v2/health/ready") == 200
    finally:
        _stop(process)
