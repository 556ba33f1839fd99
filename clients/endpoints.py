"""Every server address behind the ``--url`` values: client-side spreading over replicas.

A Kubernetes headless Service (docker/kubernetes/base/services.yaml) is one DNS name that
resolves to the address of every ready Triton pod; a load balancer's virtual IP, by contrast,
keeps a gRPC channel on one pod. :class:`Endpoints` turns ``host:port`` values into the
addresses behind them and hands them out round-robin:

* a name is resolved with ``getaddrinfo`` (IPv4 answers when there are any, else IPv6) and
  re-resolved every ``refresh`` seconds, so replicas the autoscaler adds are used and removed
  ones dropped;
* a literal IP address and this host's own names (``localhost``) are used as given, so a
  local server keeps its shared-memory transport;
* an address that fails is taken out for ``retry_after`` seconds, then tried again; when all
  are out, the one that comes back soonest is handed out;
* a name that does not resolve is kept as given (the connection then fails with the
  resolver's message and is retried like a dead server), and a name that stops resolving
  keeps its last answer.

Thread-safe: the batch client's workers share one instance.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable

LOG = logging.getLogger(__name__)

Resolver = Callable[[str, int], list[str]]
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def split_url(url: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); the port is required.

    Raises:
        ValueError: no port, or a port that is not a number.
    """
    host, sep, port = url.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"server address must be HOST:PORT, got {url!r}")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    """(host, port) -> ``host:port``, with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_fixed(host: str) -> bool:
    """True for a literal IP address or a name of this host: used as given, never resolved."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host.lower() in LOCAL_NAMES or host == socket.gethostname()


def resolve(host: str, port: int) -> list[str]:
    """Every ``address:port`` that ``host`` resolves to, in the resolver's order, without
    duplicates; IPv4 only when there is any (a dual-stack name would otherwise count each
    replica twice). Raises OSError (socket.gaierror) when the name does not resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    by_family: dict[int, list[str]] = {socket.AF_INET: [], socket.AF_INET6: []}
    for family, _type, _proto, _name, sockaddr in infos:
        if family in by_family:
            address = join_address(str(sockaddr[0]), port)
            if address not in by_family[family]:
                by_family[family].append(address)
    return by_family[socket.AF_INET] or by_family[socket.AF_INET6]


class Endpoints:
    """Round-robin over every address behind ``urls`` (``host:port`` each).

    Args:
        urls: server addresses; names are resolved, duplicates ignored.
        retry_after: seconds an address that failed stays out of rotation.
        refresh: seconds before a name is resolved again.
        resolver: ``(host, port) -> ["address:port", ...]``; :func:`resolve` by default.
        clock: monotonic time source (tests pass a fake one).
    """

    def __init__(
        self,
        urls: Iterable[str],
        retry_after: float = 15.0,
        refresh: float = 30.0,
        resolver: Resolver = resolve,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.urls = list(dict.fromkeys(urls))
        if not self.urls:
            raise ValueError("at least one server address is needed")
        self._names = {url: split_url(url) for url in self.urls}  # validates every url now
        self.retry_after = retry_after
        self.refresh = refresh
        self._resolver = resolver
        self._clock = clock
        self._answers: dict[str, list[str]] = {}
        self._resolved_at: dict[str, float] = {}
        self._dead_until: dict[str, float] = {}
        self._next = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Endpoints({', '.join(self.urls)})"

    # -- resolution ---------------------------------------------------------------------

    def _lookup(self, url: str, now: float) -> list[str]:
        host, port = self._names[url]
        if is_fixed(host):
            return [url]
        previous = self._answers.get(url)
        if previous is not None and now - self._resolved_at[url] < self.refresh:
            return previous
        self._resolved_at[url] = now
        try:
            found = self._resolver(host, port)
        except OSError as exc:
            found = []
            LOG.debug("cannot resolve %s: %s", host, exc)
        if not found:  # keep the last answer; never resolved: the name itself
            found = previous or [url]
        if found != previous:
            LOG.info("%s -> %d address(es): %s", url, len(found), ", ".join(found))
        self._answers[url] = found
        return found

    def addresses(self) -> list[str]:
        """Every current address (names resolved again when their answer is stale)."""
        with self._lock:
            return self._addresses(self._clock())

    def _addresses(self, now: float) -> list[str]:
        found: dict[str, None] = {}
        for url in self.urls:
            found.update(dict.fromkeys(self._lookup(url, now)))
        return list(found)

    # -- rotation -------------------------------------------------------------------------

    def acquire(self) -> str:
        """The next live address, or the one that comes back soonest when all are out."""
        with self._lock:
            now = self._clock()
            addresses = self._addresses(now)
            for _ in range(len(addresses)):
                address = addresses[self._next % len(addresses)]
                self._next += 1
                if self._dead_until.get(address, 0.0) <= now:
                    return address
            return min(addresses, key=lambda a: self._dead_until.get(a, 0.0))

    def live(self) -> list[str]:
        """The addresses in rotation now."""
        with self._lock:
            now = self._clock()
            return [a for a in self._addresses(now) if self._dead_until.get(a, 0.0) <= now]

    def mark_dead(self, address: str) -> None:
        """Take ``address`` out of rotation for ``retry_after`` seconds."""
        with self._lock:
            now = self._clock()
            if self._dead_until.get(address, 0.0) <= now:
                LOG.warning(
                    "server %s is not answering; out of rotation for %.0f s",
                    address,
                    self.retry_after,
                )
            self._dead_until[address] = now + self.retry_after

    def mark_alive(self, address: str) -> None:
        """Put ``address`` back into rotation (it answered)."""
        with self._lock:
            if self._dead_until.pop(address, None) is not None:
                LOG.info("server %s is back in rotation", address)
