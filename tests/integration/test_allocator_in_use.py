"""The running server and every Python-backend stub really use jemalloc (tddfa_tools.serve.allocator)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tddfa_tools.serve.allocator import find_jemalloc

pytestmark = pytest.mark.skipif(
    find_jemalloc() is None, reason="libjemalloc2 is not installed (tools/setup.sh installs it)"
)


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def _maps_jemalloc(pid: int) -> bool:
    return "libjemalloc" in Path(f"/proc/{pid}/maps").read_text()


def test_server_and_stubs_run_on_jemalloc(ensemble_server) -> None:
    server_pid = ensemble_server.process.pid
    stubs = [
        pid
        for pid in _descendants(server_pid)
        if "triton_python_backend_stub" in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    assert stubs, "no Python-backend stub under the server"
    without = [pid for pid in [server_pid, *stubs] if not _maps_jemalloc(pid)]
    assert not without, f"processes without jemalloc mapped: {without}"
