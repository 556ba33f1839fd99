"""The client's transport edges without Triton: a port that speaks the other protocol is
named at once (no 30 s of retries), and a stuck server cannot hang a call (gRPC included)."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tddfa_clients.triton_client import (
    FrameClient,
    ProtocolMismatch,
    ServerUnavailable,
    detect_protocol,
    protocol_hint,
)

HTTP2_SETTINGS = bytes.fromhex("000006040000000000000400400000")  # what gRPC servers send first


def _serve(handler) -> Iterator[str]:
    """A TCP server on 127.0.0.1 whose connections go to ``handler(conn)``; yields host:port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    held = []

    def loop() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    listener.close()
    for conn in held:
        conn.close()


@pytest.fixture()
def http_port() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def grpc_port() -> Iterator[str]:
    def handler(conn: socket.socket) -> None:
        try:
            conn.recv(1024)
            conn.sendall(HTTP2_SETTINGS)
            time.sleep(0.5)
        except OSError:
            pass
        finally:
            conn.close()

    yield from _serve(handler)


@pytest.fixture()
def stuck_port() -> Iterator[str]:
    """Accepts connections and reads, never answers."""

    def handler(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    yield from _serve(handler)


def test_detect_protocol(http_port, grpc_port) -> None:
    assert detect_protocol(http_port) == "http"
    assert detect_protocol(grpc_port) == "grpc"
    assert detect_protocol("127.0.0.1:9") is None  # nothing listens


def test_hints_name_the_fix() -> None:
    assert protocol_hint("h:8000", "grpc", "http") == (
        "h:8000 speaks HTTP, not GRPC: pass --protocol http, or the GRPC port (default 8001)"
    )
    assert "metrics port" in protocol_hint("h:8002", "http", "metrics")
    assert protocol_hint("h:8001", "grpc", "grpc") is None
    assert protocol_hint("h:8001", "grpc", None) is None  # unreachable: not a mismatch


def test_grpc_client_on_an_http_port_is_told_at_once(http_port) -> None:
    start = time.monotonic()
    with pytest.raises(ProtocolMismatch, match="speaks HTTP, not GRPC: pass --protocol http"):
        FrameClient(http_port, "grpc", timeout=10)
    assert time.monotonic() - start < 5


def test_http_client_on_a_grpc_port_is_told_at_once(grpc_port) -> None:
    start = time.monotonic()
    with pytest.raises(ProtocolMismatch, match="speaks GRPC, not HTTP: pass --protocol grpc"):
        FrameClient(grpc_port, "http", timeout=10)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_stuck_server_times_out(stuck_port, protocol) -> None:
    start = time.monotonic()
    with pytest.raises(ServerUnavailable):
        FrameClient(stuck_port, protocol, timeout=1.5)
    assert time.monotonic() - start < 10  # the timeout (plus the 2 s protocol probe)
