"""SIGTERM and SIGHUP take Ctrl-C's path (tddfa_tools.signals), in a real process."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tddfa_tools.signals import stop_like_ctrl_c

PROGRAM = """
import os, signal, sys, time
from tddfa_tools.signals import exit_status, stop_like_ctrl_c
try:
    with stop_like_ctrl_c():
        try:
            os.kill(os.getpid(), signal.{name})
            time.sleep(10)
        finally:
            os.kill(os.getpid(), signal.{name})  # a second signal during cleanup is ignored
            print("cleaned up", flush=True)
except KeyboardInterrupt as interrupt:
    sys.exit(exit_status(interrupt))
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_signal_runs_the_cleanup_and_exits_128_plus_signal(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(name=name)], capture_output=True, text=True
    )
    assert result.stdout == "cleaned up\n", result.stderr
    assert result.returncode == 128 + signal.Signals[name]


def test_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_like_ctrl_c():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
