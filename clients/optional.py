"""Whether an optional library (PyAV, OpenCV, CuPy) is installed, asked from any thread.

``importlib.util.find_spec`` raises ``ValueError: X.__spec__ is None`` while another thread
is in the middle of importing X (OpenCV's package swaps its module during its import): the
stream client probes and opens its videos in several threads at once. A module already in
``sys.modules`` (imported or being imported) is installed; the importing statement that
follows waits for the other thread's import to finish.
"""

from __future__ import annotations

import importlib.util
import sys


def installed(module: str) -> bool:
    """True when ``module`` (a top-level name) can be imported."""
    return module in sys.modules or importlib.util.find_spec(module) is not None
