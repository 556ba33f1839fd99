"""The Python-backend stub processes of one tritonserver, and its ``/dev/shm`` regions.

Triton's Python backend (python_backend r24.10, ``stub_launcher.cc``) runs every model
instance in its own process, ``triton_python_backend_stub``, launched as
``bash -c "exec <stub> <model.py path> <shm region> <shm size> <growth> <parent pid>
<python lib> <ipc handle> <instance name> <runtime model dir>"``, so the process's argv
names the model (the folder two levels above ``model.py``), the instance
(``<model>_<group>_<index>``) and the shared-memory region, whose name is the backend's
``shm-region-prefix-name`` followed by a UUID. :class:`tddfa_tools.serve.server.TritonServer`
gives every server a unique prefix, so the stubs and regions of one server are found by
that prefix, even after a killed server's stubs were re-parented.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from pathlib import Path

LOG = logging.getLogger(__name__)

STUB_BINARY = "triton_python_backend_stub"
SHM_DIR = Path("/dev/shm")
PROC = Path("/proc")


@dataclasses.dataclass(frozen=True)
class Stub:
    """One live stub process: the model instance it runs."""

    pid: int
    model: str
    instance: str
    region: str


def parse_stub(argv: list[str], pid: int) -> Stub | None:
    """The :class:`Stub` of a process with ``argv`` (None when it is not a stub)."""
    if not argv or Path(argv[0]).name != STUB_BINARY or len(argv) < 3:
        return None
    model = Path(argv[1]).parent.parent.name  # <repository>/<model>/<version>/model.py
    instance = argv[8] if len(argv) > 8 else model
    return Stub(pid=pid, model=model, instance=instance, region=argv[2])


def _argv(pid: str, proc: Path) -> list[str]:
    try:
        raw = (proc / pid / "cmdline").read_bytes()
    except OSError:  # exited meanwhile, or not ours to read
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _is_zombie(pid: str, proc: Path) -> bool:
    try:
        stat = (proc / pid / "stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")  # state follows "(comm)"


def find_stubs(shm_prefix: str, proc: Path = PROC) -> list[Stub]:
    """Live stub processes whose shared-memory region starts with ``shm_prefix`` (a dead stub
    stays a zombie until Triton reaps it at unload: zombies are not live)."""
    stubs = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stub = parse_stub(_argv(entry.name, proc), int(entry.name))
        if stub is not None and stub.region.startswith(shm_prefix):
            if not _is_zombie(entry.name, proc):
                stubs.append(stub)
    return sorted(stubs, key=lambda s: (s.model, s.instance))


def kill_stubs(shm_prefix: str, model: str | None = None, proc: Path = PROC) -> list[Stub]:
    """SIGKILL the live stubs of ``shm_prefix`` (of ``model`` only, when given): a hung stub,
    or those a killed server left running. Returns the stubs signalled."""
    killed = []
    for stub in find_stubs(shm_prefix, proc):
        if model is not None and stub.model != model:
            continue
        try:
            os.kill(stub.pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        except PermissionError as exc:
            LOG.warning("cannot kill stub %s (pid %d): %s", stub.instance, stub.pid, exc)
            continue
        killed.append(stub)
    if killed:
        LOG.info("killed stub(s) %s", ", ".join(f"{s.instance} ({s.pid})" for s in killed))
    return killed


def regions(shm_prefix: str, shm_dir: Path = SHM_DIR) -> list[str]:
    """Names of the ``/dev/shm`` regions with ``shm_prefix``."""
    try:
        return sorted(p.name for p in shm_dir.iterdir() if p.name.startswith(shm_prefix))
    except FileNotFoundError:
        return []


def remove_regions(shm_prefix: str, shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove the regions with ``shm_prefix`` (only once no process of that server maps
    them: after the server and its stubs exited). Returns the names removed."""
    if not shm_prefix:
        raise ValueError("refusing to remove /dev/shm regions without a prefix")
    removed = []
    for name in regions(shm_prefix, shm_dir):
        try:
            (shm_dir / name).unlink()
        except FileNotFoundError:
            continue
        removed.append(name)
    return removed
