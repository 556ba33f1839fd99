"""The memory allocator of tritonserver and its Python-backend stubs: jemalloc when installed.

With glibc malloc, a process's resident memory keeps its high-water marks: a rare large batch
(four sequences re-detecting full frames at once, a render pass with more tiles) leaves
arenas and a raised mmap threshold behind, so the 30-minute soak on the 2-core box saw RSS
climb in 23 MB steps long after warm-up (+6.4 %, benchmarks/RESULTS.md). jemalloc returns
freed pages to the system after a few seconds, so RSS follows the memory really in use;
Triton's own docs recommend jemalloc or tcmalloc through ``LD_PRELOAD`` for the same reason.
The stubs inherit the server's environment, so one preload covers every process.

jemalloc's thread caches keep freed blocks up to 32 KiB by default; larger ones go back to
the arena, whose pages are returned and then faulted in again (zeroed by the kernel, with a
TLB shootdown) when the next frame allocates the same buffer. The steps allocate buffers of
a few hundred kilobytes to a few megabytes per frame (crops, network activations, the
rendered frame), so with the default a tracked frame spent a third of the tracker's and a
quarter of the renderer's CPU in page faults (2-core box: 19 and 13 ms a frame against 14
and 10 with glibc; benchmarks/RESULTS.md, bench_served_cpu.py). :data:`JEMALLOC_CONF`
caches blocks up to 8 MiB per thread instead (``lg_tcache_max``, read by jemalloc 5.2 and
5.3): steady per-frame buffers are reused, larger or idle ones are still returned. A
``MALLOC_CONF`` of the caller's own replaces it.
"""

from __future__ import annotations

import logging
import os
import platform
import sysconfig
from pathlib import Path

from tddfa_tools.serve.embedded import TritonServerError

LOGGER = logging.getLogger(__name__)

ALLOCATORS = ("auto", "jemalloc", "system")
JEMALLOC_LIBRARY = "libjemalloc.so.2"
JEMALLOC_HINT = "install it with `apt-get install libjemalloc2` (tools/setup.sh does)"
# Thread caches hold freed blocks up to 2**23 bytes (8 MiB): see the module docstring.
JEMALLOC_CONF = "lg_tcache_max:23"


def find_jemalloc() -> str | None:
    """Path of the shared jemalloc (``libjemalloc.so.2``) in the usual library folders, or None.

    A plain folder scan: ``ctypes.util.find_library`` would run ``ldconfig`` in a subprocess."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    folders = [
        *os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep),
        f"/usr/lib/{multiarch}",
        f"/lib/{multiarch}",
        "/usr/local/lib",
        "/usr/lib64",
        "/usr/lib",
    ]
    for folder in filter(None, folders):
        candidate = Path(folder) / JEMALLOC_LIBRARY
        if candidate.is_file():
            return str(candidate)
    return None


def with_allocator(env: dict[str, str], allocator: str = "auto") -> dict[str, str]:
    """``env`` with ``LD_PRELOAD`` naming jemalloc first, as ``allocator`` asks, and
    ``MALLOC_CONF`` set to :data:`JEMALLOC_CONF` unless ``env`` has one.

    ``auto``: jemalloc if installed, else glibc malloc with a warning. ``jemalloc``: required
    (raises ``TritonServerError`` naming the package when missing). ``system``: ``env`` unchanged.
    """
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {ALLOCATORS}, got {allocator!r}")
    if allocator == "system":
        return env
    library = find_jemalloc()
    if library is None:
        if allocator == "jemalloc":
            raise TritonServerError(
                f"--allocator jemalloc: libjemalloc is not installed; {JEMALLOC_HINT}"
            )
        LOGGER.warning(
            "libjemalloc not found: tritonserver and its stubs use glibc malloc, whose resident "
            "memory keeps every high-water mark; %s",
            JEMALLOC_HINT,
        )
        return env
    preloaded = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    if not any("jemalloc" in p for p in preloaded):
        preloaded.insert(0, library)
    return {"MALLOC_CONF": JEMALLOC_CONF, **env, "LD_PRELOAD": ":".join(preloaded)}
