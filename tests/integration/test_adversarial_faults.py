"""Faults: a stub killed with SIGKILL (under load, twice in a row), the server back within
10 s with readiness false meanwhile and right answers after; `tddfa serve` shutting down
cleanly (exit 0 on SIGTERM, no /dev/shm left) even after a stub was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from adversarial import (
    RECOVERY_S,
    ReadinessLog,
    good_answer,
    ready,
    stubs,
    wait_until_right,
)

from tddfa_tools.serve.stubs import find_stubs, regions

pytestmark = pytest.mark.server

TOY_REPOSITORY = Path(__file__).resolve().parent / "toy_repository"


def _kill_one_stub(server) -> str:
    """SIGKILL one stub process of the server (any: the middle one of the sorted list);
    returns its model."""
    live = stubs(server)
    assert live, "the server has no Python stub process"
    victim = live[len(live) // 2]
    os.kill(victim.pid, signal.SIGKILL)
    return victim.model


def _reloads(server, model: str) -> int:
    return server.supervisor.metrics.reloads[model]


def _wait_healed(server, model: str, reloads: int, within: float = RECOVERY_S) -> None:
    """Until the supervisor counted one more reload of ``model`` and reports all healthy
    (a right answer can come before the heal ends: the answer may not need every step)."""
    deadline = time.monotonic() + within
    while not (_reloads(server, model) > reloads and server.supervisor.metrics.all_healthy()):
        assert time.monotonic() < deadline, f"{model} not healed within {within:.0f} s"
        time.sleep(0.1)


def test_killed_stub_under_load_is_back_within_10_s(ensemble_server, good_request) -> None:
    image, expected = good_request
    url = ensemble_server.http_url
    stop = threading.Event()
    wrong: list[str] = []
    outcomes: list[int] = []

    def client() -> None:  # a steady stream of good requests during the fault
        while not stop.is_set():
            status, answer = good_answer(url, image, timeout=60)
            outcomes.append(status)
            if status == 200:
                try:
                    expected.assert_equals(answer)
                except AssertionError as exc:
                    wrong.append(str(exc))

    clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(1.0)
    with ReadinessLog(url) as readiness:
        model = _kill_one_stub(ensemble_server)
        before = _reloads(ensemble_server, model)
        killed_at = time.monotonic()
        seconds = wait_until_right(url, image, expected, within=RECOVERY_S)
        time.sleep(0.5)
    stop.set()
    for thread in clients:
        thread.join(timeout=120)
    assert seconds <= RECOVERY_S
    _wait_healed(ensemble_server, model, before)
    assert readiness.model_not_ready_seen(), "readiness stayed true while the model was broken"
    # once it reads ready again after the fault, it serves: every request succeeds from there
    assert ready(url) and ready(url, "/v2/health/ready")
    assert not wrong, f"wrong answers while recovering: {wrong[:3]}"
    assert _reloads(ensemble_server, model) == before + 1
    assert outcomes.count(200) > 0
    status, answer = good_answer(url, image)
    assert status == 200
    expected.assert_equals(answer)
    print(f"stub of {model} killed: right answers again after {seconds:.1f} s "
          f"({time.monotonic() - killed_at:.1f} s to the end of the test)")  # fmt: skip


def test_two_kills_in_a_row_are_both_healed(ensemble_server, good_request) -> None:
    image, expected = good_request
    for _ in range(2):
        live = {s.model: s for s in stubs(ensemble_server)}
        model = _kill_one_stub(ensemble_server)
        before = _reloads(ensemble_server, model)
        wait_until_right(ensemble_server.http_url, image, expected, within=RECOVERY_S)
        _wait_healed(ensemble_server, model, before)
        assert {s.model for s in stubs(ensemble_server)} == set(live)
    assert len(stubs(ensemble_server)) == sum(
        len(instances) for instances in ensemble_server.supervisor._expected.values()
    )


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` in a Prometheus text page (0 when
    absent: a counter not yet incremented)."""
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric == name and set(filter(None, rest.rstrip("}").split(","))) == wanted:
            return float(value)
    return 0.0


def test_supervisor_metrics_endpoint_counts_the_reloads(ensemble_server, good_request) -> None:
    """A stub killed here is counted on the supervisor's /metrics (failure with its cause,
    one reload), and /health reads 200 once healed."""
    image, expected = good_request
    url = ensemble_server.supervisor.metrics_url

    def page() -> str:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            return response.read().decode()

    victim = stubs(ensemble_server)[0]
    model = victim.model
    before = page()
    reloads = _reloads(ensemble_server, model)
    os.kill(victim.pid, signal.SIGKILL)
    wait_until_right(ensemble_server.http_url, image, expected, within=RECOVERY_S)
    _wait_healed(ensemble_server, model, reloads)
    after = page()
    for name, labels in (
        ("tddfa_supervisor_model_failures_total", {"model": model, "cause": "stub_exited"}),
        ("tddfa_supervisor_model_reloads_total", {"model": model}),
    ):
        assert _sample(after, name, **labels) == _sample(before, name, **labels) + 1, name
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        assert response.status == 200  # healed: healthy again


def test_canary_frame_goes_through_the_ensemble(ensemble_server) -> None:
    """The supervisor's canary (tritonclient over HTTP, every output of the ensemble) is
    answered and its latency recorded."""
    seconds = ensemble_server.supervisor.canary()
    assert seconds is not None and seconds > 0
    text = ensemble_server.supervisor.metrics.render()
    assert f"tddfa_supervisor_canary_seconds {seconds}" in text


def _serve(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`tddfa serve` of the toy repository in a child process, returned once its supervisor
    reports healthy; (process, http url)."""
    from tddfa_tools.serve.server import free_port

    http, supervisor = free_port(), free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115  (closed with the process)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "tddfa_tools.cli", "serve",
            "--model-repository", str(TOY_REPOSITORY),
            "--http-port", str(http), "--grpc-port", "0", "--metrics-port", "0",
            "--supervisor-port", str(supervisor), *extra,
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not ready(f"127.0.0.1:{supervisor}", "/health"):
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        assert time.monotonic() < deadline, "tddfa serve not healthy in 120 s"
        time.sleep(0.25)
    return process, f"127.0.0.1:{http}"


def test_serve_exits_0_on_sigterm_and_leaves_no_shm_after_a_stub_was_killed(tmp_path) -> None:
    process, url = _serve(tmp_path, "--canary-interval", "0")
    prefix = f"tddfa_{process.pid}_"  # TritonServer's shm prefix names its process
    try:
        assert regions(prefix), "the Python backend should have /dev/shm regions"
        victim = find_stubs(prefix)[0]
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + RECOVERY_S
        while not any(
            s.instance == victim.instance and s.pid != victim.pid for s in find_stubs(prefix)
        ):
            assert time.monotonic() < deadline, "the killed stub was not restarted"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    log = (tmp_path / "serve.log").read_text()
    assert code == 0, log
    assert "reloaded" in log and "Traceback" not in log
    assert regions(prefix) == [], f"/dev/shm regions left: {regions(prefix)}"
    assert find_stubs(prefix) == []


def _server_pid(process: subprocess.Popen) -> int:
    """The tritonserver child of a `tddfa serve` process."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0.endswith(b"tritonserver") and int(stat.rsplit(")", 1)[1].split()[1]) == (
                process.pid
            ):
                return int(entry.name)
    raise AssertionError("no tritonserver child")


def test_a_crashed_server_is_restarted(tmp_path) -> None:
    """SIGKILL of tritonserver itself (what a segfault or the OOM killer does): `tddfa serve`
    cleans up, starts it again on the same ports, counts it, and still exits 0 on SIGTERM."""
    process, url = _serve(tmp_path, "--canary-interval", "0")
    prefix = f"tddfa_{process.pid}_"
    try:
        metrics_url = None
        for line in (tmp_path / "serve.log").read_text().splitlines():
            if "metrics and health at " in line:
                metrics_url = line.rsplit("metrics and health at ", 1)[1].strip()
        assert metrics_url, "the supervisor did not say where its endpoint is"
        first = _server_pid(process)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=2) as response:
                    text = response.read().decode()
            except OSError:
                text = ""
            if "tddfa_supervisor_server_restarts_total 1.0" in text and ready(
                url, "/v2/health/ready"
            ):
                break
            assert time.monotonic() < deadline, "the server was not restarted in 60 s"
            time.sleep(0.25)
        assert _server_pid(process) != first
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert regions(prefix) == [] and find_stubs(prefix) == []
