"""Where a Python process spends its time, every thread included: a sampling profiler.

cProfile sees one thread; the video client works in a decode thread and an encode thread
per video beside its event loop. :class:`StackSampler` reads every thread's Python stack
(``sys._current_frames``) every ``interval`` s from a thread of its own and counts, per
function, the samples where it was running (self) and where it was on the stack (total).
Threads parked in a Python-level wait (a lock, queue, selector) are left out; a thread in
C (decoding, a CUDA or gRPC call) shows the Python line that called it. Cost: a few percent of one core at 200 samples a second.
"""

from __future__ import annotations

import collections
import sys
import threading
from pathlib import Path

# leaf functions of a parked thread (a lock, a queue, a selector, an idle pool worker)
IDLE = frozenset({"wait", "select", "_worker", "get", "sleep", "_wait_for_tstate_lock", "acquire"})


class StackSampler:
    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.self_counts: collections.Counter = collections.Counter()
        self.total_counts: collections.Counter = collections.Counter()
        self.samples = 0
        self.idle = 0  # samples of threads parked in a wait (not counted below)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                if frame.f_code.co_name in IDLE or (
                    frame.f_code.co_name == "run"
                    and frame.f_code.co_filename.endswith("threading.py")
                ):  # parked, or a thread whose whole target is C (gRPC's poller)
                    self.idle += 1
                    continue
                self.samples += 1
                seen = set()
                leaf = True
                while frame is not None:
                    code = frame.f_code
                    key = f"{Path(code.co_filename).name}:{code.co_name}"
                    if leaf:
                        self.self_counts[f"{key}:{frame.f_lineno}"] += 1
                        leaf = False
                    if key not in seen:
                        self.total_counts[key] += 1
                        seen.add(key)
                    frame = frame.f_back

    def __enter__(self) -> StackSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, top: int = 40) -> str:
        """The functions by self samples (file:function:line) and by total samples."""
        lines = [f"{self.samples} busy thread samples every {self.interval * 1e3:.0f} ms "
                 f"({self.idle} parked in a wait, not shown)", "",
                 "self (running here, or in the C function called here):"]  # fmt: skip
        for key, count in self.self_counts.most_common(top):
            lines.append(f"{100 * count / max(self.samples, 1):6.1f} %  {key}")
        lines += ["", "total (on the stack):"]
        for key, count in self.total_counts.most_common(top):
            lines.append(f"{100 * count / max(self.samples, 1):6.1f} %  {key}")
        return "\n".join(lines) + "\n"
