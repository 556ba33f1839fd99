"""A ``tritonserver`` process: start, readiness, log forwarding, clean stop.

By default the embedded server of the ``nvidia-pytriton`` wheel (:mod:`tddfa_tools.serve.embedded`
finds it and prepares its Python backend); ``binary=`` runs another one (the NGC container's).

Library use::

    with TritonServer(default_repository()) as server:
        client = tritonclient.http.InferenceServerClient(server.url)

CLI: ``tddfa serve [--model-repository DIR] [--host ADDR] [--http-port N] ...``: the server
under :class:`tddfa_tools.serve.supervisor.Supervisor` (self-healing). Safe defaults: it binds
127.0.0.1, and Triton's shared-memory / model-control / logging / trace APIs need the admin
token (:mod:`tddfa_tools.serve.admin_token`; docs/security.md).
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from tddfa_tools.serve import admin_token
from tddfa_tools.serve.allocator import with_allocator
from tddfa_tools.serve.cuda_mps import CudaMps, MpsError, cuda_visible_devices
from tddfa_tools.serve.embedded import (
    THREAD_VARIABLES,
    TritonServerError,
    prepare_backends,
    server_environment,
    tritonserver_dist,
)
from tddfa_tools.serve.server_log import NO_GPU_NOTE, line_level

LOGGER = logging.getLogger(__name__)
SERVER_LOGGER = logging.getLogger("tritonserver")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now (the OS picks it; tiny race until it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class TritonServer:
    """A ``tritonserver`` child process serving one model repository.

    Args:
        model_repository: folder with ``<model>/config.pbtxt``.
        http_port, grpc_port, metrics_port: ports to bind; 0 picks a free one.
        host: address to bind; 127.0.0.1 unless the server must be reachable from other
            machines (then put it behind a proxy: docs/security.md).
        metrics_host: address of the metrics port (default ``host``): Prometheus may scrape
            from the network while inference stays on loopback behind the guard.
        log_verbose: Triton's ``--log-verbose`` level.
        startup_timeout: seconds to wait for ``/v2/health/ready``.
        exit_timeout: Triton's ``--exit-timeout-secs``: on stop it waits this long for open
            connections and in-flight requests before unloading the models anyway.
        shm_prefix: name prefix of the Python backend's ``/dev/shm`` regions (unique by default,
            so leaks can be attributed to this server and are removed by :meth:`stop`).
        extra_args: more ``tritonserver`` flags, appended as given.
        log_level: level of forwarded server lines without Triton's severity letter (the
            others keep Triton's level, :mod:`tddfa_tools.serve.server_log`).
        model_control: ``"explicit"`` (default: every model loaded at start, and the model
            control API available to the supervisor) or ``"none"``.
        restrict_admin: close Triton's shared-memory, model-repository, logging and trace
            APIs to requests without :attr:`admin_token` (:mod:`tddfa_tools.serve.admin_token`).
        binary: a ``tritonserver`` to run instead of the wheel's (the NGC container's
            ``/opt/tritonserver/bin/tritonserver``, with its own backends).
        cuda_mps: run the model instances under a private CUDA MPS daemon (:class:`CudaMps`).
        gpus: physical GPU indices the server may use (its ``CUDA_VISIBLE_DEVICES``; the
            server numbers them 0..n-1); None: every GPU of the host. One server per GPU
            (``gpus=[i]`` each) keeps every request on one GPU: docs/multi_gpu.md.
        allocator: ``"auto"`` (jemalloc when installed), ``"jemalloc"`` or ``"system"``: the
            malloc of the server and its stubs (:mod:`tddfa_tools.serve.allocator`).
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        host: str = "127.0.0.1",
        metrics_host: str | None = None,
        log_verbose: int = 0,
        startup_timeout: float = 120.0,
        exit_timeout: int = 10,
        shm_prefix: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        log_level: int = logging.INFO,
        cuda_mps: bool = False,
        model_control: str = "explicit",
        restrict_admin: bool = True,
        binary: str | os.PathLike[str] | None = None,
        gpus: Sequence[int] | None = None,
        allocator: str = "auto",
    ) -> None:
        if model_control not in ("explicit", "none"):
            raise ValueError(f"model_control must be 'explicit' or 'none', got {model_control!r}")
        self.model_repository = Path(model_repository).resolve()
        self.cuda_mps = cuda_mps
        self.gpus = None if gpus is None else tuple(int(g) for g in gpus)
        self._mps: CudaMps | None = None
        self.host = host
        self.metrics_host = metrics_host or host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(self.metrics_host)
        self.log_verbose = log_verbose
        self.startup_timeout = startup_timeout
        self.exit_timeout = exit_timeout
        self.shm_prefix = shm_prefix or f"tddfa_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.extra_args = list(extra_args)
        self.log_level = log_level
        self.model_control = model_control
        self.admin_token = admin_token.new_token() if restrict_admin else None
        self.binary = Path(binary) if binary is not None else None
        self.allocator = allocator
        self._token_files: list[Path] = []
        self._log_listeners: list[Callable[[str], None]] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._log_thread: threading.Thread | None = None
        self._log_tail: collections.deque[str] = collections.deque(maxlen=200)

    # -- endpoints ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """HTTP endpoint as tritonclient wants it: ``host:port``."""
        return f"{_client_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_client_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus endpoint, a full URL."""
        return f"http://{_client_host(self.metrics_host)}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def admin_headers(self, protocol: str = "http") -> dict[str, str]:
        """Headers that open the restricted APIs (empty when they are not restricted)."""
        return admin_token.headers(self.admin_token, protocol) or {}

    def log_tail(self) -> str:
        """The last server log lines (for error messages)."""
        return "".join(self._log_tail)

    def add_log_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(line)`` for every server log line (from the log thread)."""
        self._log_listeners.append(listener)

    # -- lifecycle ---------------------------------------------------------------------------
    def command(
        self, binary: Path, backend_directory: Path | None, cache: Path | None
    ) -> list[str]:
        """The ``tritonserver`` command line."""
        locations = [f"--backend-directory={backend_directory}"] if backend_directory else []
        if cache is not None:
            locations.append(f"--cache-directory={cache}")
        control = (
            ["--model-control-mode=explicit", "--load-model=*"]
            if self.model_control == "explicit"
            else []
        )
        restricted = admin_token.server_args(self.admin_token) if self.admin_token else []
        return [
            str(binary),
            f"--model-repository={self.model_repository}",
            *locations,
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.metrics_host}",
            f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={self.exit_timeout}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *control,
            *restricted,
            *self.extra_args,
        ]

    def _launch_plan(self) -> tuple[list[str], dict[str, str]]:
        """Command and environment: the wheel's server with our backend copy, or ``binary``."""
        if self.binary is None:
            dist = tritonserver_dist()
            cmd = self.command(
                dist / "bin" / "tritonserver", prepare_backends(dist), dist / "caches"
            )
            return cmd, with_allocator(server_environment(dist), self.allocator)
        if not self.binary.is_file():
            raise TritonServerError(f"tritonserver binary {self.binary} not found")
        env = os.environ.copy()
        for name in THREAD_VARIABLES:
            env.setdefault(name, "1")
        return self.command(self.binary, None, None), with_allocator(env, self.allocator)

    def start(self, cancel: threading.Event | None = None) -> TritonServer:
        """Start the server and block until it is ready (or ``cancel`` is set).

        Raises:
            TritonServerError: binary/stub missing, repository missing, the server exited or
                was not ready within ``startup_timeout`` (the message ends with its log tail).
        """
        if self.is_alive():
            return self
        if not self.model_repository.is_dir():
            raise TritonServerError(
                f"model repository {self.model_repository} does not exist: run `tddfa build` "
                "or pass --model-repository"
            )
        cmd, env = self._launch_plan()
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(self.gpus)
        if self.cuda_mps:
            self._mps = CudaMps(self.gpus)
            try:
                env.update(self._mps.start())
            except MpsError as exc:
                self._mps = None
                raise TritonServerError(str(exc)) from exc
        secret = self.admin_token or "\0"
        LOGGER.info("starting %s", " ".join(cmd).replace(secret, "***"))
        # Own session: a terminal Ctrl-C reaches only us, and stop() decides how the server ends;
        # but if this process dies without stopping it (SIGKILL), the server gets SIGTERM.
        self._process = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )
        self._log_thread = threading.Thread(
            target=self._forward_logs, name=f"tritonserver-{self._process.pid}-log", daemon=True
        )
        self._log_thread.start()
        try:
            self._wait_ready(cancel)
        except BaseException:
            self.stop()
            raise
        if self.admin_token:
            self._token_files = admin_token.publish(
                self.admin_token, (self.http_port, self.grpc_port)
            )
        LOGGER.info(
            "tritonserver ready: http %s, grpc %s, metrics %s",
            self.url,
            self.grpc_url,
            self.metrics_url,
        )
        return self

    def _forward_logs(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        gpu_build = any(
            "KIND_GPU" in config.read_text(errors="replace")
            for config in self.model_repository.glob("*/config.pbtxt")
        )
        noted_cpu = False
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            self._log_tail.append(line)
            level = line_level(line, self.log_level, gpu_build)
            if level == logging.DEBUG and not noted_cpu:
                noted_cpu = True
                LOGGER.info("%s", NO_GPU_NOTE)
            SERVER_LOGGER.log(level, "%s", line.rstrip())
            for listener in self._log_listeners:
                try:
                    listener(line)
                except Exception:  # noqa: BLE001 - a listener must never stop the log
                    LOGGER.exception("server log listener failed")
        process.stdout.close()

    def _wait_ready(self, cancel: threading.Event | None = None) -> None:
        deadline = time.monotonic() + self.startup_timeout
        ready_url = f"http://{self.url}/v2/health/ready"
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise TritonServerError("start-up cancelled")
            code = self.returncode()
            if code is not None:
                self._join_logs()
                raise TritonServerError(
                    f"tritonserver exited with status {code} during start-up; last log lines:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise TritonServerError(
            f"tritonserver not ready after {self.startup_timeout:.0f} s ({ready_url}); "
            f"last log lines:\n{self.log_tail()}"
        )

    def _join_logs(self) -> None:
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop the server: SIGTERM, wait up to ``timeout`` s (default ``exit_timeout`` + 20: it
        drains in-flight requests, then unloads the models), then SIGKILL. Then stub processes
        it left (a killed server's) are killed and its ``/dev/shm`` regions removed. Returns
        the exit status; idempotent."""
        timeout = self.exit_timeout + 20.0 if timeout is None else timeout
        admin_token.withdraw(self._token_files, self.admin_token or "")
        self._token_files = []
        process = self._process
        if process is None:
            self._stop_mps()
            return None
        if process.poll() is None:
            LOGGER.info("stopping tritonserver (pid %d)", process.pid)
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                LOGGER.warning("tritonserver did not stop within %.0f s: killing it", timeout)
                process.kill()
                process.wait()
            LOGGER.info("tritonserver stopped (exit status %s)", process.returncode)
        self._join_logs()
        self.cleanup()
        self._stop_mps()
        return process.returncode

    def cleanup(self) -> list[str]:
        """After the server exited: kill stub processes left behind and remove this server's
        ``/dev/shm`` regions (a stub killed by a fault leaves its region; so does a server
        that was killed). Returns the names removed."""
        from tddfa_tools.serve.stubs import kill_stubs, remove_regions

        kill_stubs(self.shm_prefix)
        removed = remove_regions(self.shm_prefix)
        if removed:
            LOGGER.info("removed %d /dev/shm region(s) left by tritonserver", len(removed))
        return removed

    def _stop_mps(self) -> None:
        if self._mps is not None:
            self._mps.stop()
            self._mps = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _load_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _load_prctl()  # resolved here: the child after fork only calls it
_PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """In the forked child: SIGTERM when the process that started it exits (an orphaned
    tritonserver would keep its ports, models and /dev/shm forever)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _client_host(host: str) -> str:
    """The address a client on this host uses for a server bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
