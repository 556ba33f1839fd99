"""SIGTERM and SIGHUP end a ``tddfa`` command the way Ctrl-C does.

``kill``, systemd, Kubernetes and CI stop a process with SIGTERM (a closed terminal sends
SIGHUP); Python's default for both is to die at once, skipping every ``finally``: a video's
staging files stay behind, shared-memory regions stay registered in the server and
sequences open. Inside :func:`stop_like_ctrl_c` both raise :class:`Terminated`, a
KeyboardInterrupt, so the cleanup written for Ctrl-C runs; a repeated signal is ignored while
it does. The exit status is then the shell's ``128 + signal number`` (130 for Ctrl-C).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, _frame: FrameType | None) -> None:
    for sig in SIGNALS:  # one stop is enough: let the cleanup finish
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def stop_like_ctrl_c() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` in the main thread while inside; the
    previous handlers come back after (tests call the CLI in-process). A no-op outside the
    main thread, where Python cannot install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal that stopped the command (SIGINT for a plain Ctrl-C)."""
    return 128 + int(getattr(interrupt, "signum", signal.SIGINT))
