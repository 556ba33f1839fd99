"""CUDA kernel sources compiled for the host with a C++ compiler, for the CPU tests of the
GPU kernels: the test gives a prelude (just enough of CUDA: thread indices, intrinsics)
and a ``launch`` function that loops over the "threads"; the kernel source comes from the
module under test, unchanged but for ``extern "C"`` (the launch function is the export)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

CXX = shutil.which("g++") or shutil.which("c++")


def compile_for_host(
    folder: Path, prelude: str, kernel_source: str, launch: str, flags: tuple[str, ...] = ()
):
    """The ``launch`` function of prelude + kernel source + launch built as a shared library
    in ``folder`` (ctypes); skips the test without a C++ compiler. ``flags``: e.g.
    ``-ffp-contract=off`` where the kernel relies on the ``_rn`` intrinsics' rounding."""
    if CXX is None:
        pytest.skip("no C++ compiler to build the kernel source for the host")
    source = folder / "kernel.cpp"
    source.write_text(prelude + kernel_source.replace('extern "C" ', "") + launch)
    library = folder / "kernel.so"
    command = [CXX, "-O1", *flags, "-shared", "-fPIC", str(source), "-o", str(library)]
    subprocess.run(command, check=True)
    return ctypes.CDLL(str(library)).launch
