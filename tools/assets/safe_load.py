"""Loading asset files safely: pickles hold only numpy data, torch checkpoints only tensors
(``weights_only=True``), numpy files without pickles; the BFM's UV coordinates from them."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

# Globals a numpy pickle needs; numpy 2 writes ``numpy._core``, numpy 1 ``numpy.core``.
_PICKLE_ALLOWED = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # bytes in protocol 2 pickles (str -> bytes, nothing else)
    }
)


class _NumpyUnpickler(pickle.Unpickler):
    """Admits only numpy arrays, dtypes, scalars and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: asset pickles may hold only numpy arrays "
                "and plain containers"
            )
        if module.startswith("numpy._core"):
            import numpy as np

            if not hasattr(np, "_core"):  # numpy < 1.26 reading a numpy 2 pickle
                module = module.replace("numpy._core", "numpy.core", 1)
        return super().find_class(module, name)


def load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle holding only numpy data (Python 2 pickles are read as latin1).

    Raises pickle.UnpicklingError naming any other global the file references.
    """
    with open(path, "rb") as f:
        return _NumpyUnpickler(f, encoding="latin1").load()


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` on the CPU (tensors and containers only)."""
    import torch

    return torch.load(os.fspath(path), weights_only=True, map_location="cpu")


def bfm_uv_coordinates(uv_mat: Path, indices: Path) -> np.ndarray:
    """(N, 2) float32 (u, v) of the no-neck vertices from BFM_UV.mat and indices.npy
    (v up; no OpenGL import, so clients that export meshes can read it)."""
    import scipy.io

    from tddfa.config import NUM_VERTICES

    uv = np.asarray(scipy.io.loadmat(str(uv_mat))["UV"], dtype=np.float32)  # (53215, 2)
    ids = np.load(indices, allow_pickle=False).astype(np.int64)
    if ids.shape != (NUM_VERTICES,) or ids.max() >= uv.shape[0]:
        raise ValueError(
            f"{indices} must hold {NUM_VERTICES} vertex ids below {uv.shape[0]}, got {ids.shape}"
        )
    return np.ascontiguousarray(uv[ids])
