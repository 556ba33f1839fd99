"""What a port speaks, found with one request: the hint for ``--url host:8000`` with gRPC.

A gRPC client pointed at an HTTP/1 port sees only "Socket closed" and an HTTP client at a
gRPC port a parse error; retrying cannot help. :func:`detect_protocol` asks once (a 2 s
deadline) and :func:`protocol_hint` turns the answer into the fix.
"""

from __future__ import annotations

import socket

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
PROTOCOLS = ("http", "grpc")
PROBE_TIMEOUT = 2.0  # seconds for the protocol probe of a port


def detect_protocol(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """What the port at ``url`` (``host:port``) speaks: ``"http"`` (an HTTP API answering
    ``GET /v2`` with JSON, as Triton's does), ``"metrics"`` (an HTTP server answering plain
    text: Triton's metrics port), ``"grpc"`` (HTTP/2, what gRPC runs on), ``"other"``, or
    None when it cannot be reached.

    One HTTP/1.1 request: an HTTP/1 server answers ``HTTP/1.x``, an HTTP/2-only server
    (gRPC) answers with a binary SETTINGS frame (frame type 4 in byte 3).
    """
    address = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = address.rpartition(":")
    data = b""
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            while len(data) < 512:
                chunk = sock.recv(512)
                if not chunk:
                    break
                data += chunk
    except (OSError, ValueError):  # refused, unreachable, timed out: judge what arrived
        pass
    if data.startswith(b"HTTP/1."):
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        return "metrics" if b"content-type: text/plain" in head else "http"
    if len(data) >= 9 and data[3] == 0x04:
        return "grpc"
    return "other" if data else None


def protocol_hint(url: str, protocol: str, seen: str | None) -> str | None:
    """A one-line fix when ``url`` speaks ``seen`` instead of ``protocol``; else None."""
    if seen is None or seen == protocol:
        return None
    if seen == "metrics":
        return (
            f"{url} is Triton's metrics port, not its {protocol.upper()} API: use port "
            f"{DEFAULT_PORTS[protocol]} (default) for --protocol {protocol}"
        )
    if seen in PROTOCOLS:
        return (
            f"{url} speaks {seen.upper()}, not {protocol.upper()}: pass --protocol {seen}, or "
            f"the {protocol.upper()} port (default {DEFAULT_PORTS[protocol]})"
        )
    return f"{url} does not speak Triton's {protocol.upper()} API (is it the right port?)"
