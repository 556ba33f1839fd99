"""Fixtures that serve a model repository with a real tritonserver.

- ``model_repository``: the repository to serve; defaults to the toy repository. Override it
  (same name, in a test module or a sub-folder's conftest) to serve another one.
- ``triton_server``: the running server for the ``model_repository`` in scope; the session
  keeps one server per repository, so modules that share a repository share its server.
- ``triton_servers``: the session's :class:`ServerPool`, for tests that need a server of an
  explicit repository (``triton_servers.get(path)``).
At the end of the session every server is stopped and no ``/dev/shm`` region created by this
process may remain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ is importable because pytest puts the folder of the rootdir conftest
# (tests/conftest.py, not inside a package) on sys.path ("prepend" import mode).
from server import RunningServer, ServerPool

TOY_REPOSITORY = Path(__file__).resolve().parent / "toy_repository"


@pytest.fixture(scope="session")
def triton_servers() -> Iterator[ServerPool]:
    pool = ServerPool()
    yield pool
    leaked = pool.close()
    assert not leaked, (
        f"/dev/shm regions leaked by the servers or clients of this session: {leaked}"
    )


@pytest.fixture(scope="session")
def model_repository() -> Path:
    """The repository ``triton_server`` serves: the toy repository unless overridden."""
    return TOY_REPOSITORY


@pytest.fixture(scope="module")
def triton_server(triton_servers: ServerPool, model_repository: Path) -> RunningServer:
    """A ready server (HTTP and gRPC) for ``model_repository``: http_url, grpc_url, metrics_url."""
    return triton_servers.get(model_repository)


@pytest.fixture(scope="module")
def ensemble_server(triton_servers: ServerPool, built_repository: Path) -> RunningServer:
    """A ready server of the real `tddfa` ensemble."""
    return triton_servers.get(built_repository)


@pytest.fixture(scope="module")
def good_request(ensemble_server, test_images):
    """(frame, its answer) for the adversarial suite: emma.jpg as served before any test of
    the module did anything to the server; "right" means equal to this."""
    from adversarial import good_answer

    image = test_images["emma.jpg"]
    status, answer = good_answer(ensemble_server.http_url, image)
    assert status == 200, f"the ensemble does not serve emma.jpg: {answer}"
    assert answer.count == 3
    return image, answer


@pytest.fixture(scope="module")
def guard(ensemble_server):
    """`tddfa guard` (HTTP and gRPC, default limits) in front of the ensemble server;
    yields (http url, grpc url)."""
    from tddfa_tools.guard.proxy import Guard

    guard = Guard("127.0.0.1", 0, 0, ensemble_server.http_url, ensemble_server.grpc_url).start()
    yield f"127.0.0.1:{guard.http.port}", f"127.0.0.1:{guard.grpc.port}"
    guard.stop()
