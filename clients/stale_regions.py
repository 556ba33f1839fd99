"""Shared-memory regions left by clients that died without cleaning up (SIGKILL, a crash).

Every region a client creates is named ``tddfa_client_<pid>_...`` (system shared memory:
``/dev/shm/<name>``, registered under the same name). A client that is killed leaves the file
in ``/dev/shm`` and the registration in the server (which keeps the memory mapped). Before a
client uses shared memory it reaps those of processes that no longer exist: their files are
unlinked and their registrations on the server it talks to removed. A process that still
exists (or whose pid was reused) is left alone.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
_CLIENT_REGION = re.compile(r"^tddfa_client_(?P<pid>\d+)_")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_stale(name: str) -> bool:
    """True for a client region name whose process is gone."""
    match = _CLIENT_REGION.match(name.lstrip("/"))
    return bool(match) and not _pid_alive(int(match["pid"]))


def remove_stale_files(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink the system shared-memory files of dead clients; returns their names."""
    removed = []
    for path in shm_dir.glob("tddfa_client_*"):
        if is_stale(path.name):
            try:
                path.unlink()
            except (FileNotFoundError, PermissionError):  # another reaper, another user's file
                continue
            removed.append(path.name)
    return removed


def _registered_names(status: Any) -> list[str]:
    """Region names of a shared-memory status answer (HTTP: a JSON list, gRPC: a message
    with a ``regions`` map)."""
    if hasattr(status, "regions"):
        return list(status.regions)
    return [entry["name"] for entry in status or []]


def unregister_stale(protocol: Any) -> list[str]:
    """Remove the server's registrations of dead clients' regions (system and CUDA) through
    ``protocol`` (a transport with the admin token); returns the names."""
    removed = []
    for kind in ("system", "cuda"):
        try:
            status = protocol.shared_memory(f"get_{kind}_shared_memory_status")
        except Exception as exc:  # noqa: BLE001  (no admin token, old server: nothing to reap)
            LOG.debug("cannot list the server's %s shared memory: %s", kind, exc)
            continue
        for name in _registered_names(status):
            if is_stale(name):
                try:
                    protocol.shared_memory(f"unregister_{kind}_shared_memory", name)
                except Exception as exc:  # noqa: BLE001  (in use, already gone)
                    LOG.debug("cannot unregister %s: %s", name, exc)
                    continue
                removed.append(name)
    return removed


def reap(protocol: Any, shm_dir: Path = SHM_DIR) -> None:
    """Both of the above, logged once when something was left behind."""
    registrations = unregister_stale(protocol)
    files = remove_stale_files(shm_dir)
    if registrations or files:
        LOG.info(
            "removed %d shared-memory registration(s) and %d /dev/shm file(s) left by "
            "clients that were killed",
            len(registrations),
            len(files),
        )
