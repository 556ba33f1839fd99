"""Array-module dispatch so the same step code runs on numpy (CPU) and CuPy (GPU).

CuPy is optional: it is imported lazily, once, and only used when an input array is
a CuPy array.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import numpy as np


@functools.lru_cache(maxsize=1)
def _cupy() -> ModuleType | None:
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def get_xp(*arrays: Any) -> ModuleType:
    """The array module (``numpy`` or ``cupy``) that owns ``arrays``.

    Returns numpy unless CuPy is importable and one of the arrays lives on the GPU.
    """
    cupy = _cupy()
    if cupy is None:
        return np
    return cupy.get_array_module(*arrays)


def to_numpy(array: Any) -> np.ndarray:
    """A host (numpy) copy or view of a numpy or CuPy array."""
    if isinstance(array, np.ndarray):
        return array
    cupy = _cupy()
    if cupy is not None and isinstance(array, cupy.ndarray):
        return cupy.asnumpy(array)
    return np.asarray(array)
