"""The admin token: Triton's restricted APIs, closed to clients that do not hold it.

``tddfa serve`` (and :class:`tddfa_tools.serve.server.TritonServer`) starts tritonserver with
``--http-restricted-api`` / ``--grpc-restricted-protocol`` over :data:`RESTRICTED_APIS`:

- ``shared-memory``: registering a system shared-memory region makes the *server* map any
  ``/dev/shm`` name the client gives, with the server's rights; registering the Python
  backend's own regions and asking for an output into them crashed tritonserver 2.51.
- ``model-repository``: with ``--model-control-mode=explicit`` (the supervisor reloads
  models through it) anyone could unload the ensemble or load a model whose files travel
  in the request (Python code the server then runs).
- ``logging`` and ``trace``: change log and trace settings (trace files are written by the
  server).

A request to those APIs must carry the header ``tddfa-admin-token: <token>`` (HTTP) or the
metadata ``triton-grpc-protocol-tddfa-admin-token: <token>`` (gRPC: Triton prefixes the key).
Inference, metadata, health and statistics stay open. The token is random per server start
and is published for clients of the same user in ``$XDG_RUNTIME_DIR/tddfa`` (else
``~/.cache/tddfa/run``), one file per port, mode 0600; ``TDDFA_ADMIN_TOKEN`` overrides it.
The local clients read it to use shared memory; nobody else needs it.

Limit: tritonserver takes the token on its command line, which other users of the same
host can read in /proc unless /proc is mounted with ``hidepid=2`` (containers have a
private process list). See docs/security.md.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from pathlib import Path

LOG = logging.getLogger(__name__)

HEADER = "tddfa-admin-token"
GRPC_HEADER = f"triton-grpc-protocol-{HEADER}"  # how Triton 2.51 expects the gRPC metadata
RESTRICTED_APIS = ("shared-memory", "model-repository", "logging", "trace")
ENV_TOKEN = "TDDFA_ADMIN_TOKEN"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "[::1]")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def server_args(token: str) -> list[str]:
    """The tritonserver flags that close :data:`RESTRICTED_APIS` to requests without it."""
    spec = f"{','.join(RESTRICTED_APIS)}:{HEADER}={token}"
    return [f"--http-restricted-api={spec}", f"--grpc-restricted-protocol={spec}"]


def headers(token: str | None, protocol: str) -> dict[str, str] | None:
    """Request headers (HTTP) or metadata (gRPC) carrying ``token``; None without one."""
    if not token:
        return None
    return {GRPC_HEADER if protocol == "grpc" else HEADER: token}


def token_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path.home() / ".cache" / "tddfa" / "run"
    return base / "tddfa" if runtime else base


def token_path(port: int) -> Path:
    return token_dir() / f"port-{int(port)}.token"


def publish(token: str, ports: list[int] | tuple[int, ...]) -> list[Path]:
    """Write ``token`` to the file of every port (folder 0700, files 0600, atomic rename);
    returns the files, for :func:`withdraw`."""
    folder = token_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for port in ports:
        path = token_path(port)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        written.append(path)
    return written


def withdraw(paths: list[Path], token: str) -> None:
    """Remove the token files that still hold ``token`` (a newer server may own the port)."""
    for path in paths:
        try:
            if path.read_text().strip() == token:
                path.unlink()
        except OSError:
            continue


def _host_and_port(url: str) -> tuple[str, int | None]:
    address = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = address.rpartition(":")
    if not host or "]" in port:  # no port, or an IPv6 address without one
        return address.strip("[]"), None
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return host, None


def find_token(url: str) -> str | None:
    """The admin token for the server at ``url`` (``host:port``): ``$TDDFA_ADMIN_TOKEN``, else
    the file published for its port when the host is this machine, else None."""
    env = os.environ.get(ENV_TOKEN)
    if env:
        return env.strip()
    host, port = _host_and_port(url)
    if port is None or host not in (*LOCAL_HOSTS, socket.gethostname()):
        return None
    try:
        return token_path(port).read_text().strip() or None
    except OSError:
        return None
