"""The ports of ``tddfa serve``: one option moves them all, and a port in use is named before
anything starts.

``--http-port N`` alone puts gRPC on N+1, metrics on N+2 and the supervisor on N+3 (the
defaults 8000..8003 follow this rule), so a second server on one host needs one option; each
port can still be given on its own. 0 is any free port (the log says which). Every port is
checked before tritonserver loads a model: a port in use stops the start at once with the
port, its option and the fix.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket

from tddfa_tools.serve.embedded import TritonServerError

DEFAULT_HTTP_PORT = 8000
OFFSETS = {"grpc": 1, "metrics": 2, "supervisor": 3}  # from the HTTP port


@dataclasses.dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int
    supervisor: int

    @classmethod
    def derived(
        cls,
        http: int = DEFAULT_HTTP_PORT,
        grpc: int | None = None,
        metrics: int | None = None,
        supervisor: int | None = None,
    ) -> Ports:
        """Ports not given follow the HTTP port (0 stays 0: any free port)."""

        def follow(port: int | None, name: str) -> int:
            if port is not None:
                return port
            return http + OFFSETS[name] if http else 0

        return cls(
            http,
            follow(grpc, "grpc"),
            follow(metrics, "metrics"),
            follow(supervisor, "supervisor"),
        )


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolve it
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_free(host: str, ports: dict[str, int]) -> None:
    """Raise TritonServerError naming the first ``{option: port}`` that cannot be bound on
    ``host`` (0 is skipped: the OS picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for option, port in ports.items():
        if not port:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # as tritonserver binds: a port whose last connections are in TIME_WAIT (a
            # server stopped a moment ago) is free; one another process listens on is not
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise TritonServerError(bind_error(host, port, option, exc)) from None


def bind_error(host: str, port: int, option: str, exc: OSError) -> str:
    """The one-line message for a port that cannot be bound."""
    if exc.errno == errno.EADDRINUSE:
        why = "is in use (another server?)"
    elif exc.errno == errno.EACCES:
        why = "needs privileges (ports below 1024)"
    else:
        why = f"cannot be bound ({exc.strerror or exc})"
    return (
        f"port {port} ({option}) on {host} {why}: choose another with {option} N, move every "
        "port at once with --http-port N (the others follow: N+1..N+3), or 0 for any free port"
    )
