"""SIGTERM and SIGHUP end a ``tddfa`` command the way Ctrl-C does.

``kill``, systemd, Kubernetes and CI stop a process with SIGTERM (a closed terminal sends
SIGHUP); Python's default for both is to die at once, skipping every ``finally``: a video's
staging files stay behind, shared-memory regions stay registered in the server and
sequences open. Inside :func:`stop_like_ctrl_c` both raise :class:`Terminated`, a
KeyboardInterrupt, so the cleanup written for Ctrl-C runs; a repeated signal is ignored while
it does. The exit status is then the shell's ``128 + signal number`` (130 for Ctrl-C).

Where the exception is raised matters. Python runs a signal handler between any two bytecodes
of the main thread; an exception raised inside a library's own bookkeeping can leave it broken:
raised in gRPC's channel code while it held the channel's lock, it left that lock taken, gRPC's
response thread waited on it forever and the cleanup waited for answers that never came. So the
exception is raised only where the main thread is in this project's code, or blocked in a
``threading`` wait called from it; elsewhere the signal is kept and looked at again every
``RETRY_S`` (SIGALRM), until the library has returned. A blocking library call therefore ends
first, within its own timeout.
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)
RETRY_S = 0.05  # how often a kept signal looks again for a safe place to raise
PROJECT_PACKAGES = frozenset({"tddfa", "tddfa_clients", "tddfa_tools", "tddfa_triton", "__main__"})


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _package(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", "")).partition(".")[0]


def _blocking_wait_lines() -> frozenset[int]:
    """The lines of ``threading.Condition.wait`` that acquire its waiter lock, where a wait
    blocks; an exception raised there is undone by ``wait`` itself (empty: no source)."""
    try:
        lines, first = inspect.getsourcelines(threading.Condition.wait)
    except (OSError, TypeError):
        return frozenset()
    return frozenset(first + i for i, line in enumerate(lines) if "waiter.acquire(" in line)


_WAIT_LINES = _blocking_wait_lines()


def safe_to_raise(frame: FrameType | None) -> bool:
    """Whether an exception raised in ``frame`` (where the main thread was interrupted) unwinds
    cleanly: no library frame between it and the nearest project frame (the standard library
    excepted), and not inside ``threading``'s lock handling unless blocked in a wait."""
    innermost = frame
    while frame is not None and _package(frame) not in PROJECT_PACKAGES:
        if _package(frame) not in sys.stdlib_module_names:
            return False  # inside a library: its locks and state may be half-changed
        frame = frame.f_back
    if innermost is None or _package(innermost) != "threading":
        return True
    if innermost.f_code is not threading.Condition.wait.__code__:
        return False  # e.g. a Condition's __enter__ / __exit__: a lock half taken or released
    return not _WAIT_LINES or innermost.f_lineno in _WAIT_LINES


class _Stop:
    """The handlers of one :func:`stop_like_ctrl_c`: the first stop signal is kept until the
    main thread is somewhere safe (SIGALRM brings it back), then raised once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.raised = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        self.on_alarm(signal.SIGALRM, frame)

    def on_alarm(self, _signum: int, frame: FrameType | None) -> None:
        if self.signum is None or self.raised:
            return
        if not safe_to_raise(frame):
            signal.setitimer(signal.ITIMER_REAL, RETRY_S)
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig in SIGNALS:  # one stop is enough: let the cleanup finish
            signal.signal(sig, signal.SIG_IGN)
        self.raised = True
        raise Terminated(self.signum)


@contextlib.contextmanager
def stop_like_ctrl_c() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` in the main thread while inside (at a
    safe place, see the module doc); the previous handlers come back after (tests call the
    CLI in-process). A no-op outside the main thread, where Python cannot install signal
    handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stop = _Stop()
    previous = {sig: signal.signal(sig, stop.on_signal) for sig in SIGNALS}
    previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, stop.on_alarm)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal that stopped the command (SIGINT for a plain Ctrl-C)."""
    return 128 + int(getattr(interrupt, "signum", signal.SIGINT))
