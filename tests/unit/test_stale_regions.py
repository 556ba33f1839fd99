"""Shared-memory files of dead clients are reaped, those of live ones kept
(tddfa_clients.stale_regions; the server side: tests/integration/test_client_signals.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tddfa_clients.stale_regions import remove_stale_files
from tddfa_clients.triton_client import client_shm_prefix


def test_only_regions_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_region = tmp_path / f"{client_shm_prefix(int(dead.stdout))}abc_0"
    live_region = tmp_path / f"{client_shm_prefix(os.getpid())}abc_0"
    other = tmp_path / "tddfa_1234_server_region"
    for path in (dead_region, live_region, other):
        path.write_bytes(b"x")
    assert remove_stale_files(tmp_path) == [dead_region.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live_region.name, other.name])
