"""GPU helpers of ``tddfa serve``: a private CUDA MPS daemon and Triton's CUDA memory pool."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
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
    """

    BINARY = "nvidia-cuda-mps-control"

    def __init__(self) -> None:
        found = shutil.which(self.BINARY) or shutil.which(
            self.BINARY, path="/usr/local/nvidia/bin:/usr/bin"
        )
        if found is None:
            raise MpsError(f"--cuda-mps needs {self.BINARY} (NVIDIA driver utilities) on PATH")
        self.binary = found
        self.directory: Path | None = None

    def environment(self) -> dict[str, str]:
        if self.directory is None:
            return {}
        return {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.directory / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(self.directory / "log"),
        }

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
            raise MpsError(f"{self.BINARY} -d failed with status {done.returncode}: see {log}")
        LOGGER.info("CUDA MPS daemon started (%s)", self.directory)
        return self.environment()

    def stop(self) -> None:
        if self.directory is None:
            return
        env = {**os.environ, **self.environment()}
        try:
            subprocess.run([self.binary], input="quit\n", env=env, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            LOGGER.warning("could not quit the CUDA MPS daemon: %s", exc)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None


def gpu_count() -> int:
    """Visible NVIDIA GPUs (``nvidia-smi -L``), 0 when there is none or no driver."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))


def cuda_memory_pool_args(megabytes: int | None, gpus: int | None = None) -> list[str]:
    """``--cuda-memory-pool-byte-size`` flags giving each GPU a pool of ``megabytes`` MB.

    Tensors that a GPU step hands to the next one live in this pool; when it is exhausted
    Triton falls back to slower allocations (or host copies).
    """
    if megabytes is None:
        return []
    if megabytes < 0:
        raise ValueError(f"--cuda-memory-pool-mb must be >= 0, got {megabytes}")
    count = gpu_count() if gpus is None else gpus
    return [f"--cuda-memory-pool-byte-size={i}:{megabytes << 20}" for i in range(count)]
