"""Per-sequence tracker state, kept by Triton sequence id.

:class:`SequenceStore` creates a sequence's :class:`SequenceState` on its START frame
and drops it on END or after an idle timeout (a client that vanished); the Triton model
sweeps it from a timer thread. A sequence may choose some of the tracker's settings for
itself on its START frame (:data:`SEQUENCE_SETTINGS`, as request parameters).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from tddfa.config import PipelineConfig
from tddfa.tracks import Track

# The tracker's settings a sequence may choose for itself on its START frame.
SEQUENCE_SETTINGS = (
    "smoothing",
    "smoothing_identity",
    "smoothing_filter",
    "smoothing_motion",
    "track_box_blend",
    "track_appearance",
)


@dataclasses.dataclass
class SequenceState:
    """Everything the tracker keeps about one sequence."""

    tracks: list[Track] = dataclasses.field(default_factory=list)
    lost: list[Track] = dataclasses.field(default_factory=list)  # remembered, not output
    next_track_id: int = 1
    frames: int = 0  # frames processed
    frames_since_detection: int = 0
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # SEQUENCE_SETTINGS
    config: PipelineConfig | None = None  # the tracker's config with the settings applied


class SequenceStore:
    """Sequence states by id: created on START, dropped on END or after ``idle_timeout``
    seconds without a frame. Thread-safe (the Triton model sweeps from a timer thread)."""

    def __init__(self, idle_timeout: float, clock: Callable[[], float] = time.monotonic):
        if idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be > 0 seconds, got {idle_timeout}")
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._states: dict[Hashable, tuple[SequenceState, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)

    def get(self, sequence_id: Hashable, start: bool) -> SequenceState:
        """The state of ``sequence_id``; a START frame (or an unknown id) begins afresh."""
        with self._lock:
            entry = self._states.get(sequence_id)
            state = SequenceState() if start or entry is None else entry[0]
            self._states[sequence_id] = (state, self.clock())
            return state

    def end(self, sequence_id: Hashable) -> None:
        with self._lock:
            self._states.pop(sequence_id, None)

    def sweep(self) -> int:
        """Drop sequences idle for longer than the timeout; returns how many."""
        now = self.clock()
        with self._lock:
            stale = [
                key for key, (_, seen) in self._states.items() if now - seen > self.idle_timeout
            ]
            for key in stale:
                del self._states[key]
        return len(stale)
