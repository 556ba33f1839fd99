"""``tddfa guard``: a checking reverse proxy in front of tritonserver, for exposed ports.

Triton 2.51 has no option that bounds what a request may declare (its ``--help`` has no
request-size limit; :mod:`tddfa_tools.guard.rules` lists what gets through), so an
exposed deployment runs ``tddfa serve`` on 127.0.0.1 and this guard on the public address:

    tddfa serve --host 127.0.0.1 --http-port 8000 --grpc-port 8001
    tddfa guard --host 0.0.0.0 --http-port 9000 --grpc-port 9001 \\
        --upstream-http 127.0.0.1:8000 --upstream-grpc 127.0.0.1:8001

HTTP: only the inference, metadata, health and statistics routes exist; a body over the
limit is refused before it is read; the JSON part of an inference request is parsed and
checked, binary data passes untouched. gRPC: only the inference, metadata, health and
statistics methods exist; ``ModelInfer`` (and each message of ``ModelStreamInfer``) is
parsed and checked, then forwarded as the bytes that came in. Refusals name the problem
(HTTP 400/403/413 with ``{"error": ...}``; gRPC INVALID_ARGUMENT, PERMISSION_DENIED,
RESOURCE_EXHAUSTED). Shared memory is not available through the guard (use it on the
server's own host).

The proxy costs a copy of every request and answer in Python: ample for a CPU server; in
front of a fast GPU server prefer a compiled proxy with the same rules (docs/security.md).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import tenacity

from tddfa_tools.guard.rules import (
    Limits,
    Refused,
    check_grpc_infer,
    check_http_infer,
    grpc_method_allowed,
    http_route_allowed,
)

LOG = logging.getLogger(__name__)

FORWARDED_REQUEST_HEADERS = ("Content-Type", "Inference-Header-Content-Length", "Accept-Encoding")
FORWARDED_RESPONSE_HEADERS = (
    "Content-Type",
    "Inference-Header-Content-Length",
    "Content-Encoding",
)
# A kept-alive upstream connection the server closed fails at once with a reset or a broken
# pipe: send again once on a new connection. A timeout is not retried (the request may be
# running: sending it again would run it twice).
_STALE_CONNECTION_RETRY = tenacity.Retrying(
    retry=tenacity.retry_if_exception_type((ConnectionResetError, BrokenPipeError)),
    stop=tenacity.stop_after_attempt(2),
    reraise=True,
)
_GRPC_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 413: "RESOURCE_EXHAUSTED"}


# -- HTTP ----------------------------------------------------------------------------------
class _HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as tritonclient expects
    upstream: tuple[str, int]
    limits: Limits
    timeout_s: float
    _local: threading.local  # one upstream connection per handler thread

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        try:
            if not http_route_allowed(self.command, self.path):
                raise Refused(f"{self.command} {self.path.split('?')[0]} is not served here", 403)
            body = self._read_body()
            if self.command == "POST":
                self._check_infer(body)
        except Refused as exc:
            self._reply(exc.status, json.dumps({"error": str(exc)}).encode(), close=True)
            return
        self._forward(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise Refused("chunked request bodies are not accepted: send Content-Length", 411)
        if self.headers.get("Content-Encoding", "identity") != "identity":
            raise Refused("compressed request bodies are not accepted here", 415)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > self.limits.max_body_bytes:
            raise Refused(
                f"request body of {length} bytes, more than {self.limits.max_body_bytes}", 413
            )
        return self.rfile.read(length) if length else b""

    def _check_infer(self, body: bytes) -> None:
        header_length = self.headers.get("Inference-Header-Content-Length")
        try:
            size = int(header_length) if header_length is not None else len(body)
        except ValueError:
            raise Refused("Inference-Header-Content-Length must be a number") from None
        if not 0 < size <= len(body):
            raise Refused("Inference-Header-Content-Length does not fit the body")
        if size > self.limits.max_json_bytes:
            raise Refused(
                f"the JSON part is {size} bytes, more than {self.limits.max_json_bytes}: send "
                "tensors as binary data (tritonclient does)",
                413,
            )
        try:
            header = json.loads(body[:size])
        except ValueError as exc:
            raise Refused(f"the request is not valid JSON: {exc}") from None
        check_http_infer(header, len(body) - size, self.limits)

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(*self.upstream, timeout=self.timeout_s)
            self._local.connection = connection
        return connection

    def _send(self, body: bytes, headers: dict[str, str]) -> tuple[http.client.HTTPResponse, bytes]:
        connection = self._connection()
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response, response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            self._local.connection = None
            raise

    def _forward(self, body: bytes) -> None:
        headers = {k: self.headers[k] for k in FORWARDED_REQUEST_HEADERS if self.headers.get(k)}
        try:
            response, payload = _STALE_CONNECTION_RETRY(self._send, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            message = json.dumps({"error": f"tritonserver unreachable: {exc}"})
            self._reply(502, message.encode())
            return
        extra = {k: response.getheader(k) for k in FORWARDED_RESPONSE_HEADERS}
        self._reply(response.status, payload, {k: v for k, v in extra.items() if v})

    def _reply(
        self, status: int, payload: bytes, headers: dict | None = None, close: bool = False
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        if close:  # a refused body may not have been read: do not reuse the connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        LOG.debug("http guard: %s", format % args)


class HttpGuard:
    """The HTTP side: a threaded server on ``host:port`` (0: free port) forwarding to
    ``upstream`` (``host:port``)."""

    def __init__(
        self, host: str, port: int, upstream: str, limits: Limits, timeout: float = 600.0
    ) -> None:
        up_host, _, up_port = upstream.rpartition(":")
        handler = type(
            "Handler",
            (_HttpHandler,),
            {
                "upstream": (up_host, int(up_port)),
                "limits": limits,
                "timeout_s": timeout,
                "_local": threading.local(),
            },
        )
        self._server = http.server.ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HttpGuard:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- gRPC ----------------------------------------------------------------------------------
def _metadata(context: grpc.ServicerContext) -> list[tuple[str, str]]:
    """The caller's metadata minus transport and admin keys."""
    return [
        (key, value)
        for key, value in context.invocation_metadata()
        if not key.startswith((":", "grpc-", "triton-grpc-protocol-")) and key != "user-agent"
    ]


def _abort(context: grpc.ServicerContext, exc: Refused) -> None:
    code = getattr(grpc.StatusCode, _GRPC_STATUS.get(exc.status, "INVALID_ARGUMENT"))
    context.abort(code, str(exc))


class _GrpcForwarder(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.Channel, limits: Limits, timeout: float) -> None:
        from tritonclient.grpc import service_pb2

        self._channel = channel
        self._limits = limits
        self._timeout = timeout
        self._request_type = service_pb2.ModelInferRequest

    def _check(self, method: str, payload: bytes) -> None:
        if method.endswith(("/ModelInfer", "/ModelStreamInfer")):
            try:
                request = self._request_type.FromString(payload)
            except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError
                raise Refused(f"not a ModelInferRequest: {exc}") from None
            check_grpc_infer(request, self._limits)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if not grpc_method_allowed(method):

            def refuse(_request: bytes, context: grpc.ServicerContext) -> bytes:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not served here")
                return b""

            return grpc.unary_unary_rpc_method_handler(refuse)
        if method.endswith("/ModelStreamInfer"):
            return grpc.stream_stream_rpc_method_handler(self._stream(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    def _deadline(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        return min(remaining, self._timeout) if remaining is not None else self._timeout

    def _unary(self, method: str):
        call = self._channel.unary_unary(method)

        def forward(payload: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                self._check(method, payload)
            except Refused as exc:
                _abort(context, exc)
            try:
                return call(payload, timeout=self._deadline(context), metadata=_metadata(context))
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")
            return b""

        return forward

    def _stream(self, method: str):
        call = self._channel.stream_stream(method)

        def forward(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            refused: list[Refused] = []

            def checked() -> Iterator[bytes]:
                for payload in requests:
                    try:
                        self._check(method, payload)
                    except Refused as exc:
                        refused.append(exc)
                        return
                    yield payload

            try:
                yield from call(checked(), metadata=_metadata(context))
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")
            if refused:
                _abort(context, refused[0])

        return forward


class GrpcGuard:
    """The gRPC side: a server on ``host:port`` (0: free port) forwarding to ``upstream``."""

    def __init__(
        self,
        host: str,
        port: int,
        upstream: str,
        limits: Limits,
        timeout: float = 600.0,
        workers: int = 16,
    ) -> None:
        size = ("grpc.max_receive_message_length", limits.max_body_bytes)
        send = ("grpc.max_send_message_length", -1)
        exclusive = ("grpc.so_reuseport", 0)  # a port in use is an error, never shared
        self._channel = grpc.insecure_channel(
            upstream, options=[("grpc.max_receive_message_length", -1), send]
        )
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=workers),
            options=[size, send, exclusive],
        )
        self._server.add_generic_rpc_handlers((_GrpcForwarder(self._channel, limits, timeout),))
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"cannot bind the gRPC guard to {host}:{port}")

    def start(self) -> GrpcGuard:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=5).wait()
        self._channel.close()


class Guard:
    """Both sides in front of one tritonserver: HTTP on ``host:http_port`` to
    ``upstream_http``, gRPC on ``host:grpc_port`` to ``upstream_grpc`` (0: free ports)."""

    def __init__(
        self,
        host: str,
        http_port: int,
        grpc_port: int,
        upstream_http: str,
        upstream_grpc: str,
        limits: Limits | None = None,
        timeout: float = 600.0,
    ) -> None:
        limits = limits or Limits()
        self.host = host
        self.upstream_http, self.upstream_grpc = upstream_http, upstream_grpc
        self.http = HttpGuard(host, http_port, upstream_http, limits, timeout)
        try:
            self.grpc = GrpcGuard(host, grpc_port, upstream_grpc, limits, timeout)
        except BaseException:
            self.http.stop()
            raise

    def start(self) -> Guard:
        self.http.start()
        self.grpc.start()
        LOG.info(
            "guarding http %s:%d -> %s and grpc %s:%d -> %s",
            self.host, self.http.port, self.upstream_http,
            self.host, self.grpc.port, self.upstream_grpc,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        self.grpc.stop()
        self.http.stop()
