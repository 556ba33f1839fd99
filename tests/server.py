"""Test-side helper: real ``tritonserver`` processes for integration tests.

One server per model repository per test session (:class:`ServerPool`), started through
:class:`tddfa_tools.serve.server.TritonServer` on free ports, ready on HTTP *and* gRPC before a test
sees it, and checked for leaked ``/dev/shm`` regions when the session ends.

Every server runs under a :class:`tddfa_tools.serve.supervisor.Supervisor` (as ``tddfa serve``
runs it; no canary: tests send their own requests), so a test that kills a stub finds the
model reloaded, and the fixture's readiness wait covers it.

Shared-memory names: the Python backend's regions of our servers start with
:data:`OWNED_SHM_PREFIX` and the clients' regions with
``tddfa_clients.triton_client.client_shm_prefix()`` (both carry this process's pid), so the
leak check counts exactly the regions this test process created and ignores other
processes on the host (other sessions, other servers).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tddfa_clients.triton_client import client_shm_prefix
from tddfa_tools.serve.embedded import TritonServerError
from tddfa_tools.serve.server import TritonServer
from tddfa_tools.serve.supervisor import Supervisor, SupervisorSettings

LOGGER = logging.getLogger(__name__)
SHM_DIR = Path("/dev/shm")
OWNED_SHM_PREFIX = f"tddfa_{os.getpid()}_"
OWNED_PREFIXES = (OWNED_SHM_PREFIX, client_shm_prefix())


def shm_entries() -> set[str]:
    """Names in /dev/shm now (empty where there is no /dev/shm)."""
    try:
        return {entry.name for entry in SHM_DIR.iterdir()}
    except FileNotFoundError:
        return set()


@dataclasses.dataclass(frozen=True)
class RunningServer:
    """What a test needs from a started server. URLs are ``host:port`` (tritonclient style)
    except ``metrics_url``, a full ``http://.../metrics`` URL."""

    http_url: str
    grpc_url: str
    metrics_url: str
    model_repository: Path
    process: TritonServer
    supervisor: Supervisor

    def is_alive(self) -> bool:
        return self.process.is_alive()


def wait_until_ready(server: TritonServer, timeout: float = 60.0) -> None:
    """Block until the server answers ready on HTTP and gRPC (tritonclient), else raise.

    Raises:
        TritonServerError: not ready on both protocols within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    with (
        httpclient.InferenceServerClient(server.url) as http,
        grpcclient.InferenceServerClient(server.grpc_url) as grpc,
    ):
        while time.monotonic() < deadline:
            if not server.is_alive():
                raise TritonServerError(
                    f"tritonserver exited (status {server.returncode()}); last log lines:\n"
                    f"{server.log_tail()}"
                )
            try:
                if http.is_server_ready() and grpc.is_server_ready(client_timeout=2.0):
                    return
            except Exception as exc:  # noqa: BLE001 - any client error means "not yet"
                last_error = exc
            time.sleep(0.25)
    raise TritonServerError(
        f"tritonserver not ready on HTTP {server.url} and gRPC {server.grpc_url} within "
        f"{timeout:.0f} s (last error: {last_error}); last log lines:\n{server.log_tail()}"
    )


class ServerPool:
    """Starts at most one server per model repository and stops them all in :meth:`close`.

    A repository whose server failed to start is not retried: later requests re-raise the
    first error at once instead of waiting for another start-up timeout.
    """

    def __init__(self, startup_timeout: float = 300.0) -> None:
        self.startup_timeout = startup_timeout
        self._servers: dict[Path, RunningServer] = {}
        self._failures: dict[Path, TritonServerError] = {}
        self._shm_before = shm_entries()

    def get(self, model_repository: str | os.PathLike[str]) -> RunningServer:
        """The running server for ``model_repository``, started on first use.

        Raises:
            TritonServerError: it failed to start, or it died earlier in the session.
        """
        key = Path(model_repository).resolve()
        if key in self._failures:
            raise self._failures[key]
        running = self._servers.get(key)
        if running is not None:
            if not running.is_alive():
                raise TritonServerError(
                    f"the tritonserver for {key} died during the session (status "
                    f"{running.process.returncode()}); last log lines:\n{running.process.log_tail()}"
                )
            return running
        server = TritonServer(
            key,
            startup_timeout=self.startup_timeout,
            shm_prefix=f"{OWNED_SHM_PREFIX}server{len(self._servers)}_",
            exit_timeout=5,
        )
        try:
            server.start()
            wait_until_ready(server)
            supervisor = Supervisor(server, SupervisorSettings(canary_interval=0)).start()
        except TritonServerError as exc:
            server.stop()
            self._failures[key] = exc
            raise
        running = RunningServer(
            server.url, server.grpc_url, server.metrics_url, key, server, supervisor
        )
        self._servers[key] = running
        return running

    def close(self) -> list[str]:
        """Stop every server; return the leaked /dev/shm entries this process owned."""
        for running in self._servers.values():
            running.supervisor.stop()
            running.process.stop()
        self._servers.clear()
        new = shm_entries() - self._shm_before
        leaked = sorted(name for name in new if name.startswith(OWNED_PREFIXES))
        foreign = sorted(set(new) - set(leaked))
        if foreign:
            LOGGER.info("new /dev/shm entries of other processes (ignored): %s", foreign)
        return leaked


def model_counts(
    server: RunningServer, model: str, inferences: int = 0, within: float = 10.0
) -> tuple[int, int]:
    """(inference_count, execution_count) Triton counted for ``model``; waits up to
    ``within`` s for inference_count to reach ``inferences``, or, without a target (a
    baseline), for the counts to stop changing (Triton records an execution's statistics
    just after sending its responses, so a client can be ahead of them)."""
    deadline = time.monotonic() + within
    previous = None
    with httpclient.InferenceServerClient(server.http_url) as client:
        while True:
            stats = client.get_inference_statistics(model)["model_stats"][0]
            counts = int(stats["inference_count"]), int(stats["execution_count"])
            reached = counts[0] >= inferences if inferences else counts == previous
            if reached or time.monotonic() >= deadline:
                return counts
            previous = counts
            time.sleep(0.2)
