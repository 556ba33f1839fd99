"""Evidence from a server whose requests do not come back (the two-GPU hang of docs/multi_gpu.md).

:func:`dump` gathers, without stopping anything: the requests each model still holds
(Triton's ``nv_inference_pending_request_count``) and its success/failure counters, the
Python stacks of every model instance (SIGUSR1 to each stub: tddfa_triton.diagnostics
writes them into the server log), each stub's kernel wait channel, the CUDA MPS daemon's
logged failures, and ``nvidia-smi``. The device machines have no gdb, strace or py-spy.

  python3 benchmarks/hang_dump.py --server-pid PID --metrics http://127.0.0.1:8002/metrics
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STUB = "triton_python_backend_stub"
METRICS = (
    "nv_inference_pending_request_count",
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_exec_count",
)


def metric_lines(url: str) -> list[str]:
    """The per-model lines of METRICS from Prometheus text at ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    except OSError as exc:
        return [f"metrics unavailable at {url}: {exc}"]
    return [line for line in text.splitlines() if line.startswith(METRICS)]


def stub_processes(server_pid: int) -> list[tuple[int, str]]:
    """(pid, model instance name) of the Python-backend stubs of ``server_pid`` (/proc).

    A stub's arguments (python_backend stub_launcher.cc, r24.10): model path, shm region,
    sizes, the parent's pid (argv[5]), python lib, ipc handle, the instance name (argv[8]).
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:
            continue
        if len(argv) < 9 or not argv[0].endswith(STUB) or argv[5] != str(server_pid):
            continue
        found.append((int(entry.name), argv[8]))
    return sorted(found)


def wait_channel(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
    except OSError:
        return "?"


def dump(server_pid: int, metrics_url: str, mps_problems: list[str] | None = None) -> str:
    """A text report; the stacks themselves land in the server log (SIGUSR1)."""
    lines = [f"== hang dump {time.strftime('%Y-%m-%d %H:%M:%S')} (server pid {server_pid})"]
    lines += ["-- requests per model (pending = inside the model, not answered)"]
    lines += metric_lines(metrics_url)
    stubs = stub_processes(server_pid)
    lines += [f"-- {len(stubs)} stub processes: pid, instance, kernel wait channel"]
    for pid, name in stubs:
        lines.append(f"{pid} {name} {wait_channel(pid)}")
        try:
            os.kill(pid, signal.SIGUSR1)  # Python stacks of every thread -> server log
        except OSError as exc:
            lines.append(f"   SIGUSR1 failed: {exc}")
    lines.append("-- Python stacks: see the server log ('Current thread' / 'Thread 0x' blocks)")
    if mps_problems is not None:
        lines += ["-- CUDA MPS log failures"] + (mps_problems or ["none"])
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv"],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        lines += ["-- nvidia-smi", smi.strip()]
    except (OSError, subprocess.SubprocessError) as exc:
        lines.append(f"-- nvidia-smi failed: {exc}")
    time.sleep(2.0)  # let the stubs write their stacks before the caller reads the log
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--metrics", default="http://127.0.0.1:8002/metrics")
    args = parser.parse_args(argv)
    sys.stdout.write(dump(args.server_pid, args.metrics) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
