"""Evidence for a request that never comes back, gathered without slowing the serving path.

- :func:`install_stack_dump`: ``kill -USR1 <stub pid>`` makes a model instance write the
  Python stack of every thread to its stderr, which tritonserver forwards to its log. A hung
  instance then shows where it waits (a CUDA call, a lock, our code) even when its main
  thread is blocked inside C: faulthandler's handler runs at the C level. The device
  machines have no gdb or py-spy; this needs neither.
- :class:`CrossDeviceNotice`: says once per input and source GPU that a tensor reached an
  instance from another GPU (the ensemble scheduler has no GPU affinity: docs/multi_gpu.md).
"""

from __future__ import annotations

import faulthandler
import signal
import sys

STACK_DUMP_SIGNAL = signal.SIGUSR1


def install_stack_dump(signum: int = STACK_DUMP_SIGNAL) -> bool:
    """Dump every thread's Python stack to stderr on ``signum``; False where that is not
    possible (no usable stderr, or the platform lacks the signal). Idempotent."""
    stream = sys.__stderr__
    try:
        if stream is None or stream.fileno() < 0:
            return False
        faulthandler.register(signum, file=stream, all_threads=True, chain=False)
    except (AttributeError, ValueError, RuntimeError, OSError):
        return False
    return True


class CrossDeviceNotice:
    """Remembers which (input, source GPU) pairs were already reported; :meth:`first`
    is True only the first time a pair is seen in this process."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, int]] = set()

    def first(self, name: str, source_device: int) -> bool:
        key = (name, int(source_device))
        if key in self._seen:
            return False
        self._seen.add(key)
        return True
