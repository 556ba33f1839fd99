"""SIGTERM and SIGHUP take Ctrl-C's path (tddfa_tools.signals), in a real process, raised
only where unwinding is safe (not inside a library's code)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from tddfa_tools.signals import safe_to_raise, stop_like_ctrl_c

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


LIBRARY = """
import os, signal, threading, time
LOCK = threading.Lock()

def work():
    LOCK.acquire()  # state changed without try/finally, as a library's internals may do
    os.kill(os.getpid(), signal.SIGTERM)  # the signal lands here, inside the library
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass
    LOCK.release()
    print("library done", flush=True)
"""

CALLER = """
import sys, time
sys.path.insert(0, {folder!r})
import slowlib
from tddfa_tools.signals import exit_status, stop_like_ctrl_c
try:
    with stop_like_ctrl_c():
        try:
            slowlib.work()
            time.sleep(10)
        finally:
            print("cleaned up, library lock", "held" if slowlib.LOCK.locked() else "free")
except KeyboardInterrupt as interrupt:
    sys.exit(exit_status(interrupt))
"""


def test_a_signal_inside_a_library_is_raised_once_it_returns(tmp_path) -> None:
    """Raised inside the library, the stop would leave its lock taken (gRPC's channel lock
    once hung the video client's cleanup): it waits until the library returns."""
    (tmp_path / "slowlib.py").write_text(LIBRARY)
    result = subprocess.run(
        [sys.executable, "-c", CALLER.format(folder=str(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.stdout == "library done\ncleaned up, library lock free\n", result.stderr
    assert result.returncode == 128 + signal.SIGTERM


def _frame_in(module: str, body: str = "return sys._getframe()", name: str = "probe"):
    """A function defined in a module named ``module``, returning its own frame by default."""
    namespace = {"__name__": module, "sys": sys}
    exec(f"def {name}(call=None):\n    {body}\n", namespace)  # noqa: S102 - test-made code
    return namespace[name]


def test_safe_places_to_raise() -> None:
    caller = _frame_in("tddfa_clients.transport", "return call()")  # project code calls
    assert safe_to_raise(caller(_frame_in("tddfa_clients.video")))
    assert safe_to_raise(caller(_frame_in("json.decoder")))  # the standard library
    assert not safe_to_raise(caller(_frame_in("grpc._channel")))  # a library
    assert not safe_to_raise(caller(_frame_in("threading", name="__exit__")))  # lock handling


def test_a_blocked_wait_is_a_safe_place() -> None:
    condition = threading.Condition()
    waiting = _frame_in("tddfa_clients.video", "with call:\n        call.wait(30)")
    thread = threading.Thread(target=waiting, args=(condition,), daemon=True)
    thread.start()
    for _ in range(500):  # until the thread blocks in Condition.wait
        frame = sys._current_frames().get(thread.ident)
        if frame is not None and frame.f_code is threading.Condition.wait.__code__:
            break
        time.sleep(0.01)
    assert frame.f_code is threading.Condition.wait.__code__
    assert safe_to_raise(frame)
    with condition:
        condition.notify()
    thread.join(timeout=5)
