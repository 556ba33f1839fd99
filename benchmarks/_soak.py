"""Soak test pieces without a server: process memory, samples, and their analysis.

Used by ``soak.py``; unit-tested in tests/unit/test_soak.py.

- :class:`ProcessTable`: the tritonserver process and its Python-backend stubs (one per model
  instance, children of the server), labelled by model, with their resident memory (psutil
  when installed, else ``/proc/<pid>/status``).
- :class:`Sample`: one row of the soak CSV (counters, throughput, RSS per process group).
- :func:`analyse`: after warm-up, how much each group's RSS grew (median of the last samples
  vs the first ones, and the least-squares slope in MB/h over runs of 10 min or more),
  throughput and errors, and the verdict.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

SERVER = "tritonserver"
STUB_BINARY = "triton_python_backend_stub"
RSS_LIMIT_PERCENT = 5.0  # RSS growth after warm-up must stay under this
SLOPE_MIN_SECONDS = 600.0  # a slope in MB/h over a shorter window is mostly noise


# -- processes ----------------------------------------------------------------------------


PROC = Path("/proc")


def rss_bytes(pid: int, proc: Path = PROC) -> int | None:
    """Resident set size of ``pid`` in bytes (psutil when installed, else VmRSS of
    ``/proc/<pid>/status``); None when the process is gone."""
    if proc == PROC:
        try:
            import psutil
        except ImportError:
            pass
        else:
            try:
                return int(psutil.Process(pid).memory_info().rss)
            except psutil.Error:
                return None
    try:
        status = (proc / str(pid) / "status").read_text(errors="replace")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def stub_model(argv: Sequence[str]) -> str:
    """The model a stub serves, from its command line: the first argument is
    ``<repository>/<model>/<version>/model.py``."""
    if len(argv) > 1 and argv[1].endswith(".py"):
        parts = Path(argv[1]).parts
        if len(parts) >= 3:
            return parts[-3]
    return "unknown"


class ProcessTable:
    """The server ``pid`` and its stub children, found again at every :meth:`groups` call
    (a stub that died and was restarted keeps being counted under its model)."""

    def __init__(self, server_pid: int, proc: Path = PROC):
        self.server_pid = server_pid
        self._proc = proc

    def children(self) -> list[tuple[int, list[str]]]:
        """(pid, argv) of every direct child of the server."""
        found = []
        for entry in self._proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid != self.server_pid:
                    continue
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except (OSError, ValueError, IndexError):
                continue
            found.append((int(entry.name), [a for a in argv if a]))
        return sorted(found)

    def groups(self) -> dict[str, list[int]]:
        """{label: pids}: ``tritonserver`` and ``stub:<model>`` per model."""
        groups: dict[str, list[int]] = {SERVER: [self.server_pid]}
        for pid, argv in self.children():
            if argv and Path(argv[0]).name == STUB_BINARY:
                groups.setdefault(f"stub:{stub_model(argv)}", []).append(pid)
        return groups

    def rss_mb(self) -> dict[str, float]:
        """{label: resident MB summed over the group's processes}; gone processes count 0."""
        return {
            label: sum(rss_bytes(pid, self._proc) or 0 for pid in pids) / 2**20
            for label, pids in self.groups().items()
        }


# -- samples --------------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    elapsed_s: float
    frames: int  # cumulative successful requests
    errors: int  # cumulative failed requests
    frames_per_s: float  # over the interval since the previous sample
    rss_mb: dict[str, float]  # per process group (ProcessTable.rss_mb)

    @property
    def stubs_mb(self) -> float:
        return sum(v for k, v in self.rss_mb.items() if k.startswith("stub:"))

    @property
    def total_mb(self) -> float:
        return sum(self.rss_mb.values())


def next_sample(
    previous: Sample | None, elapsed_s: float, frames: int, errors: int, rss_mb: dict[str, float]
) -> Sample:
    """The sample at ``elapsed_s``, its throughput measured since ``previous``."""
    if previous is None or elapsed_s <= previous.elapsed_s:
        rate = 0.0
    else:
        rate = (frames - previous.frames) / (elapsed_s - previous.elapsed_s)
    return Sample(elapsed_s, frames, errors, rate, dict(rss_mb))


def write_csv(path: Path, samples: Sequence[Sample]) -> None:
    """One row per sample; RSS columns per process group (groups of any sample)."""
    groups = sorted({g for s in samples for g in s.rss_mb})
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["elapsed_s", "frames", "errors", "frames_per_s", "total_rss_mb", "stubs_rss_mb"]
            + [f"rss_mb[{g}]" for g in groups]
        )
        for s in samples:
            writer.writerow(
                [f"{s.elapsed_s:.1f}", s.frames, s.errors, f"{s.frames_per_s:.3f}"]
                + [f"{s.total_mb:.1f}", f"{s.stubs_mb:.1f}"]
                + [f"{s.rss_mb.get(g, 0.0):.1f}" for g in groups]
            )
    os.replace(temporary, path)


# -- analysis -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Growth:
    group: str
    start_mb: float  # median of the first samples after warm-up
    end_mb: float  # median of the last samples
    percent: float
    slope_mb_per_h: float | None  # least squares after warm-up; None below SLOPE_MIN_SECONDS


@dataclasses.dataclass(frozen=True)
class Analysis:
    seconds: float
    frames: int
    errors: int
    frames_per_s: float  # after warm-up
    min_frames_per_s: float  # slowest interval after warm-up
    growth: tuple[Growth, ...]  # total first, then stubs, server, per model
    warm_samples: int

    @property
    def max_growth_percent(self) -> float:
        return max((g.percent for g in self.growth), default=0.0)

    @property
    def flat(self) -> bool:
        total = self.growth[0] if self.growth else None
        return total is not None and total.percent < RSS_LIMIT_PERCENT

    @property
    def verdict(self) -> str:
        memory = "flat" if self.flat else "GROWS"
        errors = "no errors" if self.errors == 0 else f"{self.errors} ERRORS"
        ok = self.flat and self.errors == 0
        return (
            f"{'PASS' if ok else 'FAIL'}: total RSS {memory} "
            f"({self.growth[0].percent:+.1f} % after warm-up, limit {RSS_LIMIT_PERCENT:.0f} %), "
            f"{errors}"
            if self.growth
            else "no sample after warm-up: run longer than the warm-up"
        )


def slope_per_hour(times_s: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` over ``times_s``, per hour (0 with < 2 points)."""
    n = len(times_s)
    if n < 2:
        return 0.0
    mean_t, mean_v = sum(times_s) / n, sum(values) / n
    var = sum((t - mean_t) ** 2 for t in times_s)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in zip(times_s, values, strict=True))
    return cov / var * 3600.0


def _growth(group: str, warm: Sequence[Sample], values: Iterable[float]) -> Growth:
    """Start and end are medians of the first and last fifth of the samples (at most 5 each):
    one sample's RSS moves by tens of MB as buffers come and go."""
    series = list(values)
    k = max(1, min(5, len(series) // 5))
    start, end = statistics.median(series[:k]), statistics.median(series[-k:])
    percent = (end - start) / start * 100.0 if start > 0 else 0.0
    times = [s.elapsed_s for s in warm]
    slope = slope_per_hour(times, series) if times[-1] - times[0] >= SLOPE_MIN_SECONDS else None
    return Growth(group, start, end, percent, slope)


def analyse(samples: Sequence[Sample], warmup_s: float, warmup_frames: int = 0) -> Analysis:
    """Growth of each process group's RSS after warm-up, throughput after warm-up, errors
    over the whole run. Warm-up ends at the first sample that is ``warmup_s`` seconds in
    *and* has ``warmup_frames`` frames done: on a loaded machine a fixed time may not even
    cover one pass over the frames, while buffers still grow with each new batch size."""
    if not samples:
        raise ValueError("no samples to analyse")
    last = samples[-1]
    warm = [s for s in samples if s.elapsed_s >= warmup_s and s.frames >= warmup_frames]
    growth: list[Growth] = []
    rate = slowest = 0.0
    if len(warm) >= 2:
        first = warm[0]
        growth.append(_growth("total", warm, (s.total_mb for s in warm)))
        growth.append(_growth("stubs", warm, (s.stubs_mb for s in warm)))
        for group in sorted(first.rss_mb):
            growth.append(_growth(group, warm, (s.rss_mb.get(group, 0.0) for s in warm)))
        span = last.elapsed_s - first.elapsed_s
        rate = (last.frames - first.frames) / span if span > 0 else 0.0
        slowest = min(s.frames_per_s for s in warm[1:])
    return Analysis(
        seconds=last.elapsed_s,
        frames=last.frames,
        errors=last.errors,
        frames_per_s=rate,
        min_frames_per_s=slowest,
        growth=tuple(growth),
        warm_samples=len(warm),
    )


def growth_table(analysis: Analysis) -> tuple[list[str], list[list[object]]]:
    """Header and rows for RESULTS.md: one row per process group."""
    header = ["process", "RSS MB after warm-up", "RSS MB at end", "growth %", "slope MB/h"]
    rows = [
        [
            g.group,
            g.start_mb,
            g.end_mb,
            f"{g.percent:+.2f}",
            "n/a" if g.slope_mb_per_h is None else f"{g.slope_mb_per_h:+.1f}",
        ]
        for g in analysis.growth
    ]
    return header, rows
