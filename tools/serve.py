"""Run the embedded ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel.

Only the wheel's server binary and its Python backend are used (PyTriton itself is never
imported). The wheel keeps one Python-backend stub per Python version; Triton looks for the
stub next to the backend library, so we copy the wheel's ``backends/`` tree plus the stub that
matches this interpreter into a cache directory we own (the wheel in site-packages is never
modified) and point ``--backend-directory`` there.

Library use::

    with TritonServer("build/model_repository") as server:
        client = tritonclient.http.InferenceServerClient(server.url)

CLI: ``tddfa serve [--model-repository DIR] [--http-port N] [--grpc-port N] ...``.
"""

from __future__ import annotations

import argparse
import collections
import ctypes.util
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

LOGGER = logging.getLogger(__name__)
SERVER_LOGGER = logging.getLogger("tritonserver")

DEFAULT_REPOSITORY = Path("build/model_repository")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
SETUP_HINT = "run tools/setup.sh (or `pip install --no-deps nvidia-pytriton==0.7.0`)"


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class TritonServerError(RuntimeError):
    """The embedded server is missing, failed to start or died."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now (the OS picks it; tiny race until it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def python_tag() -> str:
    """``"3.11"`` for the running interpreter: selects the matching Python-backend stub."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def tritonserver_dist() -> Path:
    """Directory ``pytriton/tritonserver`` of the installed wheel (found without importing it).

    Raises:
        TritonServerError: when nvidia-pytriton is not installed or lacks the server binary.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError(f"nvidia-pytriton is not installed: {SETUP_HINT}")
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise TritonServerError(
            f"nvidia-pytriton is installed but {dist / 'bin' / 'tritonserver'} is missing "
            f"(a source or editable install?): {SETUP_HINT}"
        )
    return dist


def _wheel_libs(dist: Path) -> Path:
    """``nvidia_pytriton.libs``: the shared libraries auditwheel bundled with the wheel."""
    return dist.parent.parent / "nvidia_pytriton.libs"


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tddfa" / "tritonserver"


def prepare_backends(dist: Path | None = None, cache_root: Path | None = None) -> Path:
    """Return a backend directory whose ``python/`` holds the stub for this interpreter.

    Copies ``<wheel>/backends`` and ``python_backend_stubs/3.X/triton_python_backend_stub``
    once into ``<cache>/<wheel version>-py3.X/backends`` (atomic rename, safe when several
    servers start at once).

    Raises:
        TritonServerError: when the wheel has no stub for this Python version.
    """
    dist = dist or tritonserver_dist()
    stub = dist / "python_backend_stubs" / python_tag() / "triton_python_backend_stub"
    if not stub.is_file():
        known = sorted(p.name for p in (dist / "python_backend_stubs").glob("3.*"))
        raise TritonServerError(
            f"no Python backend stub for Python {python_tag()} in {dist} (the wheel has "
            f"{', '.join(known) or 'none'}): create the venv with one of those Python versions"
        )
    try:
        version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    target = (cache_root or _cache_root()) / f"{version}-py{python_tag()}" / "backends"
    if (target / "python" / stub.name).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=target.parent))
    try:
        shutil.copytree(dist / "backends", staging / "backends", ignore=_ignore_pycache)
        shutil.copy2(stub, staging / "backends" / "python" / stub.name)
        try:
            os.rename(staging / "backends", target)
        except OSError:
            if not (target / "python" / stub.name).is_file():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOGGER.debug("Python backend with stub %s prepared in %s", stub, target)
    return target


def _ignore_pycache(_directory: str, names: list[str]) -> list[str]:
    return [name for name in names if name == "__pycache__"]


def _libpython_dir() -> str | None:
    """Directory of this interpreter's ``libpython3.X.so``, or None when the system one is used.

    Raises:
        TritonServerError: when no shared libpython exists for the stub to load.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlibrary = sysconfig.get_config_var("LDLIBRARY") or ""
    if (
        sysconfig.get_config_var("Py_ENABLE_SHARED")
        and libdir
        and (Path(libdir) / ldlibrary).exists()
    ):
        return str(libdir)
    if ctypes.util.find_library(f"python{python_tag()}") is None:
        raise TritonServerError(
            f"the Python backend stub needs libpython{python_tag()}.so but this Python is "
            f"statically linked and the system has none: apt-get install libpython{python_tag()} "
            "or use a Python built with --enable-shared"
        )
    return None


def server_environment(dist: Path) -> dict[str, str]:
    """Environment for ``tritonserver`` and the Python-backend stubs it spawns.

    - ``LD_LIBRARY_PATH``: this interpreter's libpython first (the stub links ``libpython3.X``;
      without this it could pick another build of 3.X from the system), then the wheel's
      bundled libraries (the copied stub's RUNPATH no longer points at them).
    - ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``: 1 unless set (one
      process per model instance already uses the cores).
    - ``PATH``: this interpreter's ``bin/`` first. The stub embeds the *base* interpreter, not
      the venv, and ignores ``PYTHONPATH`` (checked with nvidia-pytriton 0.7.0). An embedded
      CPython finds its prefix by searching ``PATH`` for ``python3`` and then reads
      ``pyvenv.cfg`` next to it, so the models see the venv's site-packages including ``.pth``
      files (our editable install; numpy < 2). PyTriton relies on the same mechanism.
    """
    env = os.environ.copy()
    # One Python process per model instance: math libraries that start a thread per core in
    # each (OpenBLAS, OpenMP, MKL, PyTorch's CPU pool) oversubscribe the cores (seen on a
    # 16-core GPU machine: 0.4 ms of numpy per batch took 37 ms). Explicit settings win.
    for name in THREAD_VARIABLES:
        env.setdefault(name, "1")
    libs = [_libpython_dir(), str(_wheel_libs(dist)), env.get("LD_LIBRARY_PATH")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    bindir = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join(p for p in (str(bindir), env.get("PATH")) if p)
    found = shutil.which("python3", path=str(bindir))
    if found is None or Path(found).resolve() != Path(sys.executable).resolve():
        LOGGER.warning(
            "%s/python3 is not this interpreter (%s): Python models may not see its packages; "
            "run from a virtual environment (tools/setup.sh creates .venv)",
            bindir,
            sys.executable,
        )
    return env


class CudaMps:
    """A private CUDA MPS control daemon for one server's processes.

    Every Python-backend instance is a process with its own CUDA context; without MPS the
    GPU time-slices between those contexts, and a frame that passes seven steps waits for
    seven context switches (measured on one H100: ~120 frames/s with 8 or 16 instances,
    480-570 with MPS). The daemon gets its own pipe/log folders, so only processes started
    with :meth:`environment` (the server and its stubs) use it; ``stop`` quits it.

    Several GPUs: ONE daemon serves every GPU its server sees. A control daemon spawns one
    MPS server per user that manages all the devices visible to the daemon, and the choice
    is forced anyway: tritonserver and all its stub processes share one environment, so
    they can reach only one ``CUDA_MPS_PIPE_DIRECTORY``, and a stub that receives a tensor
    from another GPU opens a context there too. ``devices`` pins the daemon to the same
    ``CUDA_VISIBLE_DEVICES`` as its server (a client may only use devices its daemon sees).
    One daemon per GPU happens naturally with one server per GPU (``TritonServer(gpus=[i])``
    per GPU, each with its own private daemon): docs/multi_gpu.md.
    """

    BINARY = "nvidia-cuda-mps-control"
    READY_TIMEOUT = 10.0  # seconds for the daemon's control pipe to appear

    def __init__(self, devices: Sequence[int] | None = None) -> None:
        found = shutil.which(self.BINARY) or shutil.which(
            self.BINARY, path="/usr/local/nvidia/bin:/usr/bin"
        )
        if found is None:
            raise TritonServerError(
                f"--cuda-mps needs {self.BINARY} (NVIDIA driver utilities) on PATH"
            )
        self.binary = found
        self.devices = None if devices is None else tuple(int(d) for d in devices)
        self.directory: Path | None = None

    def environment(self) -> dict[str, str]:
        """The variables of the daemon's clients (empty while it is not running)."""
        if self.directory is None:
            return {}
        env = {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.directory / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(self.directory / "log"),
        }
        if self.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(self.devices)
        return env

    def start(self) -> dict[str, str]:
        """Start the daemon; returns the variables its clients need."""
        self.directory = Path(tempfile.mkdtemp(prefix="tddfa-mps-"))
        for name in ("pipe", "log"):
            (self.directory / name).mkdir()
        env = {**os.environ, **self.environment()}
        # no pipes: the daemon it forks would hold them open and run() would never return
        done = subprocess.run(
            [self.binary, "-d"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        if done.returncode != 0:
            log = self.directory / "log"
            self.directory = None
            raise TritonServerError(
                f"{self.BINARY} -d failed with status {done.returncode}: see {log}"
            )
        self._wait_for_pipe()
        LOGGER.info(
            "CUDA MPS daemon started (%s) for %s",
            self.directory,
            "GPUs " + cuda_visible_devices(self.devices)
            if self.devices is not None
            else "every visible GPU",
        )
        return self.environment()

    def _wait_for_pipe(self) -> None:
        """The daemon creates its control pipe when it listens; clients started before that
        silently run without MPS. Missing after READY_TIMEOUT: a warning, not an error (a
        driver may name it differently)."""
        assert self.directory is not None
        pipe = self.directory / "pipe"
        deadline = time.monotonic() + self.READY_TIMEOUT
        while time.monotonic() < deadline:
            if any(pipe.iterdir()):
                return
            time.sleep(0.05)
        LOGGER.warning(
            "the CUDA MPS daemon made no control pipe in %s within %.0f s: the server may run "
            "without MPS (see %s)",
            pipe,
            self.READY_TIMEOUT,
            self.directory / "log",
        )

    def log_problems(self, limit: int = 20) -> list[str]:
        """Lines of the daemon's and MPS server's logs that report a failure (client limit,
        a fatal GPU fault, a refused client...): evidence when a served request hangs."""
        if self.directory is None:
            return []
        lines: list[str] = []
        for log in sorted((self.directory / "log").glob("*.log")):
            try:
                text = log.read_text(errors="replace")
            except OSError:
                continue
            lines += [
                f"{log.name}: {line.strip()}"
                for line in text.splitlines()
                if any(word in line.lower() for word in ("error", "fail", "fault", "exceed"))
            ]
        return lines[-limit:]

    def stop(self) -> None:
        if self.directory is None:
            return
        for line in self.log_problems():
            LOGGER.warning("CUDA MPS: %s", line)
        env = {**os.environ, **self.environment()}
        try:
            subprocess.run([self.binary], input="quit\n", env=env, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            LOGGER.warning("could not quit the CUDA MPS daemon: %s", exc)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None


class TritonServer:
    """A ``tritonserver`` child process serving one model repository.

    Args:
        model_repository: folder with ``<model>/config.pbtxt``.
        http_port, grpc_port, metrics_port: ports to bind; 0 picks a free one.
        log_verbose: Triton's ``--log-verbose`` level.
        startup_timeout: seconds to wait for ``/v2/health/ready``.
        exit_timeout: Triton's ``--exit-timeout-secs``: on stop it waits this long for open
            connections and in-flight requests before unloading the models anyway.
        shm_prefix: name prefix of the Python backend's ``/dev/shm`` regions (unique by default,
            so leaks can be attributed to this server).
        extra_args: more ``tritonserver`` flags, appended as given.
        log_level: level at which server log lines are forwarded to the ``tritonserver`` logger.
        cuda_mps: run the model instances under a private CUDA MPS daemon (:class:`CudaMps`).
        gpus: physical GPU indices the server may use (its ``CUDA_VISIBLE_DEVICES``; the
            server numbers them 0..n-1); None: every GPU of the host. One server per GPU
            (``gpus=[i]`` each) keeps every request on one GPU: docs/multi_gpu.md.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str] = DEFAULT_REPOSITORY,
        *,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        host: str = "127.0.0.1",
        log_verbose: int = 0,
        startup_timeout: float = 120.0,
        exit_timeout: int = 10,
        shm_prefix: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        log_level: int = logging.INFO,
        cuda_mps: bool = False,
        gpus: Sequence[int] | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.cuda_mps = cuda_mps
        self.gpus = None if gpus is None else tuple(int(g) for g in gpus)
        self._mps: CudaMps | None = None
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.log_verbose = log_verbose
        self.startup_timeout = startup_timeout
        self.exit_timeout = exit_timeout
        self.shm_prefix = shm_prefix or f"tddfa_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.extra_args = list(extra_args)
        self.log_level = log_level
        self._process: subprocess.Popen[bytes] | None = None
        self._log_thread: threading.Thread | None = None
        self._log_tail: collections.deque[str] = collections.deque(maxlen=200)

    # -- endpoints ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """HTTP endpoint as tritonclient wants it: ``host:port``."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus endpoint, a full URL."""
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def log_tail(self) -> str:
        """The last server log lines (for error messages)."""
        return "".join(self._log_tail)

    # -- lifecycle ---------------------------------------------------------------------------
    def command(self, backend_directory: Path, dist: Path) -> list[str]:
        """The ``tritonserver`` command line."""
        return [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_directory}",
            f"--cache-directory={dist / 'caches'}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={self.exit_timeout}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        """Start the server and block until it is ready.

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
        dist = tritonserver_dist()
        backends = prepare_backends(dist)
        cmd = self.command(backends, dist)
        env = server_environment(dist)
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(self.gpus)
        if self.cuda_mps:
            self._mps = CudaMps(self.gpus)
            env.update(self._mps.start())
        LOGGER.info("starting %s", " ".join(cmd))
        # Own session: a terminal Ctrl-C reaches only us, and stop() decides how the server ends.
        self._process = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._log_thread = threading.Thread(
            target=self._forward_logs, name=f"tritonserver-{self._process.pid}-log", daemon=True
        )
        self._log_thread.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
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
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            self._log_tail.append(line)
            SERVER_LOGGER.log(self.log_level, "%s", line.rstrip())
        process.stdout.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        ready_url = f"http://{self.url}/v2/health/ready"
        while time.monotonic() < deadline:
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
        drains in-flight requests, then unloads the models), then SIGKILL. Returns the exit
        status; idempotent."""
        timeout = self.exit_timeout + 20.0 if timeout is None else timeout
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
        self._stop_mps()
        return process.returncode

    def _stop_mps(self) -> None:
        if self._mps is not None:
            self._mps.stop()
            self._mps = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def gpu_count() -> int:
    """NVIDIA GPUs of the host (``nvidia-smi -L``), 0 when there is none or no driver."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))


def cuda_visible_devices(gpus: Sequence[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for physical GPU indices; refuses negative or repeated ones."""
    gpus = [int(g) for g in gpus]
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus) or not gpus:
        raise ValueError(f"GPU indices must be distinct and >= 0, got {gpus}")
    return ",".join(str(g) for g in gpus)


def visible_gpu_count(environ: dict[str, str] | None = None, host_gpus: int | None = None) -> int:
    """GPUs a CUDA process started with ``environ`` sees (Triton numbers them 0..n-1).

    ``CUDA_VISIBLE_DEVICES`` counts as CUDA reads it: entries up to the first invalid one
    (an index beyond the host's GPUs, or anything that is neither an index nor a
    ``GPU-``/``MIG-`` UUID); unset means every GPU of the host.
    """
    environ = os.environ if environ is None else environ
    host = gpu_count() if host_gpus is None else host_gpus
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return host
    count = 0
    for entry in value.split(","):
        entry = entry.strip()
        if (entry.isdigit() and int(entry) < host) or entry.startswith(("GPU-", "MIG-")):
            count += 1
        else:
            break
    return min(count, host)


def cuda_memory_pool_args(megabytes: int | None, gpus: int | None = None) -> list[str]:
    """``--cuda-memory-pool-byte-size`` flags giving each GPU a pool of ``megabytes`` MB.

    Tensors that a GPU step hands to the next one live in this pool; when it is exhausted
    Triton falls back to slower allocations (or host copies). ``gpus``: how many GPUs the
    server sees (default: :func:`visible_gpu_count`, so a server restricted with
    ``CUDA_VISIBLE_DEVICES`` or ``--gpus`` gets no flag for a device it cannot see, which
    Triton would refuse).
    """
    if megabytes is None:
        return []
    if megabytes < 0:
        raise ValueError(f"--cuda-memory-pool-mb must be >= 0, got {megabytes}")
    count = visible_gpu_count() if gpus is None else gpus
    return [f"--cuda-memory-pool-byte-size={i}:{megabytes << 20}" for i in range(count)]


def _gpu_list(text: str) -> tuple[int, ...]:
    try:
        gpus = tuple(int(part) for part in text.split(",") if part.strip())
        cuda_visible_devices(gpus)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--gpus takes distinct GPU indices separated by commas, e.g. 0,1 ({exc})"
        ) from None
    return gpus


# -- CLI ---------------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the embedded tritonserver (from the nvidia-pytriton wheel) on a model repository",
        description="Start tritonserver with the model repository, wait until it is ready, "
        "forward its log to stderr and stop it cleanly on Ctrl-C or SIGTERM. "
        "Port 0 picks a free port.",
    )
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help="model repository folder (default: %(default)s, written by `tddfa build`)",
    )
    for name, port in DEFAULT_PORTS.items():
        parser.add_argument(
            f"--{name}-port", type=int, default=port, metavar="N", help=f"default {port}"
        )
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--log-verbose", type=int, default=0, metavar="N", help="Triton log verbosity"
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds to wait for readiness",
    )
    parser.add_argument(
        "--cuda-memory-pool-mb",
        type=int,
        default=None,
        metavar="MB",
        help="Triton's CUDA memory pool per GPU (default: Triton's 64 MB); GPU builds pass "
        "device tensors between steps through it: give it about 40 MB per frame in flight",
    )
    parser.add_argument(
        "--cuda-mps",
        action="store_true",
        help="run the GPU model instances under a private CUDA MPS daemon (no GPU "
        "time-slicing between the instances' processes; ~4x the frames/s of a GPU build); "
        "one daemon serves every GPU this server uses",
    )
    parser.add_argument(
        "--gpus",
        type=_gpu_list,
        default=None,
        metavar="LIST",
        help="GPUs this server may use, e.g. 0 or 0,1 (its CUDA_VISIBLE_DEVICES; default: "
        "all). One server per GPU (--gpus 0 and --gpus 1 on other ports) keeps every "
        "request on one GPU",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``tddfa serve``: serve until SIGINT/SIGTERM (exit 0) or until the server dies (exit 1)."""
    stop_requested = threading.Event()
    stopping = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if stop_requested.is_set() or stopping.is_set():
            LOGGER.info("%s received: already shutting down", signal.Signals(signum).name)
            return
        LOGGER.info("%s received: shutting down", signal.Signals(signum).name)
        stop_requested.set()
        raise KeyboardInterrupt  # leaves the serve loop or the readiness wait

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = TritonServer(
        args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=args.host,
        log_verbose=args.log_verbose,
        startup_timeout=args.startup_timeout,
        extra_args=cuda_memory_pool_args(
            args.cuda_memory_pool_mb, gpus=len(args.gpus) if args.gpus else None
        ),
        cuda_mps=args.cuda_mps,
        gpus=args.gpus,
    )
    try:
        try:
            server.start()
            # 0.0.0.0 is not a client address: say what a client on this host should use.
            LOGGER.info(
                "serving %s: --url localhost:%d --protocol http, or localhost:%d --protocol grpc;"
                " Ctrl-C stops",
                server.model_repository,
                server.http_port,
                server.grpc_port,
            )
            while server.is_alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        except TritonServerError as exc:
            LOGGER.error("%s", exc)
            return 1
        finally:
            stopping.set()  # further signals are logged, not raised, while the server stops
            code = server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop_requested.is_set():
        return 0
    LOGGER.error("tritonserver exited unexpectedly with status %s", code)
    return 1
