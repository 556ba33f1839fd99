"""benchmarks/hang_dump.py finds a server's Python-backend stubs by their arguments and asks
each for its stacks (SIGUSR1), here with a stand-in stub process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import hang_dump  # noqa: E402

STUB_CODE = (
    "import faulthandler, signal, sys, time\n"
    "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
    "print('ready', flush=True)\n"
    "def stuck_in_execute():\n"
    "    time.sleep(30)\n"
    "stuck_in_execute()\n"
)


def test_dump_finds_the_stubs_and_gets_their_stacks(tmp_path):
    stub = tmp_path / hang_dump.STUB
    stub.symlink_to(sys.executable)
    # argv as python_backend launches a stub: ..., argv[5] = parent pid, argv[8] = instance
    argv = [
        str(stub),
        "-c",
        STUB_CODE,
        "shm",
        "1",
        str(os.getpid()),
        "lib",
        "h",
        "face_renderer_0_1",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        assert (process.pid, "face_renderer_0_1") in hang_dump.stub_processes(os.getpid())
        report = hang_dump.dump(os.getpid(), "http://127.0.0.1:9/metrics", mps_problems=[])
        assert f"{process.pid} face_renderer_0_1" in report
        assert "metrics unavailable" in report
        time.sleep(0.5)
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert "stuck_in_execute" in stderr  # the stand-in stub printed its stack on SIGUSR1


def test_other_processes_are_not_stubs():
    assert hang_dump.stub_processes(os.getpid()) == []
