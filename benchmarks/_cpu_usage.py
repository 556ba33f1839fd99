"""Host work per frame: CPU time of each kind of process around a run, and the GPU's busy share.

- :func:`server_groups`: every ``tritonserver`` on the machine and its Python-backend stubs
  by model (``stub:<model>``, _soak.ProcessTable), the ``tddfa serve`` supervisor that
  started it, and CUDA MPS daemons; :func:`cpu_seconds` reads utime + stime from
  ``/proc/<pid>/stat`` (all threads of the process).
- :class:`CpuWindow`: those groups' CPU seconds and the machine's busy cores (``/proc/stat``)
  between :meth:`CpuWindow.start` and :meth:`CpuWindow.stop`. Processes that start after
  ``start`` count from zero; clients are measured by the caller (their own ``getrusage``).
- :class:`GpuBusy`: NVML's utilisation (share of time a kernel ran) sampled every 100 ms in
  a thread, averaged; ``None`` without NVML (nvidia-ml-py) or a GPU.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from _soak import PROC, STUB_BINARY, ProcessTable

SERVER = "tritonserver"
TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int, proc: Path = PROC) -> list[str] | None:
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, proc: Path = PROC) -> float:
    """User + system CPU seconds of ``pid`` so far (all its threads); 0 when it is gone."""
    fields = _stat_fields(pid, proc)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def _comm(pid: int, proc: Path) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def _parent(pid: int, proc: Path) -> int:
    fields = _stat_fields(pid, proc)
    return int(fields[1]) if fields else 0


def listening_pid(port: int, proc: Path = PROC) -> int | None:
    """The process listening on TCP ``port`` of this host (``/proc/net/tcp*`` and the
    processes' socket descriptors), or None."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if inodes.intersection(links):
            return int(entry.name)
    return None


def server_groups(proc: Path = PROC, servers: list[int] | None = None) -> dict[str, list[int]]:
    """{group: pids}: ``tritonserver``, ``stub:<model>``, ``supervisor`` (the process that
    started a tritonserver: ``tddfa serve``) and ``cuda mps``; every tritonserver of the
    machine unless ``servers`` names their pids."""
    groups: dict[str, list[int]] = {}
    pids = [int(e.name) for e in proc.iterdir() if e.name.isdigit()]
    for pid in pids:
        comm = _comm(pid, proc)
        if comm == SERVER and (servers is None or pid in servers):
            for label, members in ProcessTable(pid, proc).groups().items():
                groups.setdefault(label, []).extend(members)
            parent = _parent(pid, proc)
            if parent > 1 and _comm(parent, proc).startswith(("python", "tddfa")):
                groups.setdefault("supervisor", []).append(parent)
        elif comm.startswith("nvidia-cuda-mps"):
            groups.setdefault("cuda mps", []).append(pid)
    return groups


def busy_jiffies(proc: Path = PROC) -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot (``/proc/stat``'s cpu line)."""
    values = [int(v) for v in (proc / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuWindow:
    """CPU seconds per server group and the machine's busy cores over a window."""

    def __init__(self, servers: list[int] | None = None, proc: Path = PROC):
        self._proc = proc
        self._servers = servers  # tritonserver pids (None: every one of the machine)

    def start(self) -> CpuWindow:
        self._groups = server_groups(self._proc, self._servers)
        self._before = {
            pid: cpu_seconds(pid, self._proc) for g in self._groups.values() for pid in g
        }
        self._busy = busy_jiffies(self._proc)
        return self

    def stop(self) -> dict[str, float]:
        """{group: CPU seconds in the window}, plus ``cores busy`` (average busy cores)."""
        groups = server_groups(self._proc, self._servers)  # restarted stubs are found again
        seconds = {}
        for label, pids in groups.items():
            seconds[label] = sum(
                max(0.0, cpu_seconds(pid, self._proc) - self._before.get(pid, 0.0)) for pid in pids
            )
        busy, total = busy_jiffies(self._proc)
        cores = os.cpu_count() or 1
        span = (total - self._busy[1]) or 1
        seconds["cores busy"] = cores * (busy - self._busy[0]) / span
        return seconds


class GpuBusy:
    """The mean NVML utilisation of GPU ``index`` while the context is open (percent)."""

    def __init__(self, index: int = 0, period: float = 0.1):
        self.index, self.period = index, period
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuBusy:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        except Exception:  # noqa: BLE001  (no NVML or no GPU: no figure)
            return self

        def sample() -> None:
            while not self._stop.wait(self.period):
                self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def percent(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def per_frame_rows(
    seconds: dict[str, float], client_seconds: float, frames: int
) -> list[tuple[str, float]]:
    """(process kind, CPU ms per frame) rows: clients, the server (tritonserver + stubs) and
    each group, then cores busy (not per frame)."""
    frames = max(frames, 1)
    server = sum(v for k, v in seconds.items() if k == SERVER or k.startswith("stub:"))
    rows = [
        ("clients", 1e3 * client_seconds / frames),
        ("server (tritonserver + stubs)", 1e3 * server / frames),
    ]
    for label in sorted(k for k in seconds if k != "cores busy"):
        rows.append((f"  {label}", 1e3 * seconds[label] / frames))
    return rows


__all__ = [
    "STUB_BINARY",
    "CpuWindow",
    "GpuBusy",
    "cpu_seconds",
    "listening_pid",
    "per_frame_rows",
    "server_groups",
]
