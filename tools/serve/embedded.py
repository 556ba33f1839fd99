"""The embedded ``tritonserver`` of the ``nvidia-pytriton`` wheel: where it is, the Python
backend with the stub for this interpreter, and the environment the server and stubs need.

Only the wheel's server binary and its Python backend are used (PyTriton itself is never
imported). The wheel keeps one Python-backend stub per Python version; Triton looks for the
stub next to the backend library, so the wheel's ``backends/`` tree plus the stub that
matches this interpreter are copied into a cache directory we own (the wheel in
site-packages is never modified) and ``--backend-directory`` points there.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from tddfa_tools.locations import user_cache_dir

LOGGER = logging.getLogger(__name__)

SETUP_HINT = "run tools/setup.sh (or `pip install --no-deps nvidia-pytriton==0.7.0`)"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class TritonServerError(RuntimeError):
    """The embedded server is missing, failed to start or died."""


def python_tag() -> str:
    """``"3.11"`` for the running interpreter: selects the matching Python-backend stub."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def tritonserver_dist() -> Path:
    """Directory ``pytriton/tritonserver`` of the installed wheel (found without importing it).

    Raises:
        TritonServerError: when nvidia-pytriton is not installed or lacks the server binary.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError(f"nvidia-pytriton is not installed: {SETUP_HINT}")
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise TritonServerError(
            f"nvidia-pytriton is installed but {dist / 'bin' / 'tritonserver'} is missing "
            f"(a source or editable install?): {SETUP_HINT}"
        )
    return dist


def _wheel_libs(dist: Path) -> Path:
    """``nvidia_pytriton.libs``: the shared libraries auditwheel bundled with the wheel."""
    return dist.parent.parent / "nvidia_pytriton.libs"


def prepare_backends(dist: Path | None = None, cache_root: Path | None = None) -> Path:
    """Return a backend directory whose ``python/`` holds the stub for this interpreter.

    Copies ``<wheel>/backends`` and ``python_backend_stubs/3.X/triton_python_backend_stub``
    once into ``<cache>/<wheel version>-py3.X/backends`` (atomic rename, safe when several
    servers start at once).

    Raises:
        TritonServerError: when the wheel has no stub for this Python version.
    """
    dist = dist or tritonserver_dist()
    stub = dist / "python_backend_stubs" / python_tag() / "triton_python_backend_stub"
    if not stub.is_file():
        known = sorted(p.name for p in (dist / "python_backend_stubs").glob("3.*"))
        raise TritonServerError(
            f"no Python backend stub for Python {python_tag()} in {dist} (the wheel has "
            f"{', '.join(known) or 'none'}): create the venv with one of those Python versions"
        )
    try:
        version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    target = (
        (cache_root or user_cache_dir() / "tritonserver")
        / f"{version}-py{python_tag()}"
        / "backends"
    )
    if (target / "python" / stub.name).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=target.parent))
    try:
        shutil.copytree(dist / "backends", staging / "backends", ignore=_ignore_pycache)
        shutil.copy2(stub, staging / "backends" / "python" / stub.name)
        try:
            os.rename(staging / "backends", target)
        except OSError:
            if not (target / "python" / stub.name).is_file():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOGGER.debug("Python backend with stub %s prepared in %s", stub, target)
    return target


def _ignore_pycache(_directory: str, names: list[str]) -> list[str]:
    return [name for name in names if name == "__pycache__"]


def _libpython_dir() -> str | None:
    """Directory of this interpreter's ``libpython3.X.so``, or None when the system one is used.

    Raises:
        TritonServerError: when no shared libpython exists for the stub to load.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlibrary = sysconfig.get_config_var("LDLIBRARY") or ""
    if (
        sysconfig.get_config_var("Py_ENABLE_SHARED")
        and libdir
        and (Path(libdir) / ldlibrary).exists()
    ):
        return str(libdir)
    if ctypes.util.find_library(f"python{python_tag()}") is None:
        raise TritonServerError(
            f"the Python backend stub needs libpython{python_tag()}.so but this Python is "
            f"statically linked and the system has none: apt-get install libpython{python_tag()} "
            "or use a Python built with --enable-shared"
        )
    return None


def server_environment(dist: Path) -> dict[str, str]:
    """Environment for ``tritonserver`` and the Python-backend stubs it spawns.

    - ``LD_LIBRARY_PATH``: this interpreter's libpython first (the stub links ``libpython3.X``;
      without this it could pick another build of 3.X from the system), then the wheel's
      bundled libraries (the copied stub's RUNPATH no longer points at them).
    - ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``: 1 unless set (one
      process per model instance already uses the cores).
    - ``PATH``: this interpreter's ``bin/`` first. The stub embeds the *base* interpreter, not
      the venv, and ignores ``PYTHONPATH`` (checked with nvidia-pytriton 0.7.0). An embedded
      CPython finds its prefix by searching ``PATH`` for ``python3`` and then reads
      ``pyvenv.cfg`` next to it, so the models see the venv's site-packages including ``.pth``
      files (our editable install; numpy < 2). PyTriton relies on the same mechanism.
    """
    env = os.environ.copy()
    # One Python process per model instance: math libraries that start a thread per core in
    # each (OpenBLAS, OpenMP, MKL, PyTorch's CPU pool) oversubscribe the cores (seen on a
    # 16-core GPU machine: 0.4 ms of numpy per batch took 37 ms). Explicit settings win.
    for name in THREAD_VARIABLES:
        env.setdefault(name, "1")
    libs = [_libpython_dir(), str(_wheel_libs(dist)), env.get("LD_LIBRARY_PATH")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    bindir = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join(p for p in (str(bindir), env.get("PATH")) if p)
    found = shutil.which("python3", path=str(bindir))
    if found is None or Path(found).resolve() != Path(sys.executable).resolve():
        LOGGER.warning(
            "%s/python3 is not this interpreter (%s): Python models may not see its packages; "
            "run from a virtual environment (tools/setup.sh creates .venv)",
            bindir,
            sys.executable,
        )
    return env
