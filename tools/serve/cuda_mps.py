"""GPU helpers of ``tddfa serve``: a private CUDA MPS daemon and Triton's CUDA memory pool."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

LOGGER = logging.getLogger(__name__)


class MpsError(RuntimeError):
    """The CUDA MPS daemon is missing or failed to start."""


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
            raise MpsError(f"--cuda-mps needs {self.BINARY} (NVIDIA driver utilities) on PATH")
        self.binary = found
        self.devices = None if devices is None else tuple(int(d) for d in devices)
        self.directory: Path | None = None

    def environment(self) -> dict[str, str]:
        """The variables of the daemon's clients (empty while it is not running).

        A client of a daemon pinned to GPUs (``devices``) numbers them as the daemon sees
        them, 0..n-1: with the physical numbers it would find no GPU (seen on two H200s:
        "KIND_GPU but no GPUs are available" for a server pinned to GPU 1)."""
        if self.directory is None:
            return {}
        env = {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.directory / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(self.directory / "log"),
        }
        if self.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(range(len(self.devices)))
        return env

    def start(self) -> dict[str, str]:
        """Start the daemon; returns the variables its clients need."""
        self.directory = Path(tempfile.mkdtemp(prefix="tddfa-mps-"))
        for name in ("pipe", "log"):
            (self.directory / name).mkdir()
        env = {**os.environ, **self.environment()}
        if self.devices is not None:  # the daemon itself sees the physical GPUs
            env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(self.devices)
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
            raise MpsError(f"{self.BINARY} -d failed with status {done.returncode}: see {log}")
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
