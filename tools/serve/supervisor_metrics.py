"""The supervisor's metrics (prometheus_client) and its small HTTP endpoint.

``GET /metrics`` (Prometheus text format, or OpenMetrics when the scraper asks for it)::

    tddfa_supervisor_model_failures_total{cause="stub_exited",model="face_detector"} 1.0
    tddfa_supervisor_model_reloads_total{model="face_detector"} 1.0
    tddfa_supervisor_model_healthy{model="face_detector"} 1.0
    tddfa_supervisor_server_up 1.0
    tddfa_supervisor_server_restarts_total 0.0
    tddfa_supervisor_canary_failures_total 0.0
    tddfa_supervisor_canary_seconds 0.084

``GET /health``: 200 with a JSON summary while every model serves, else 503 (a model is
broken or reloading, or the server is down). Triton's own ``/v2/health/ready`` says the same
for the models (``--strict-readiness``), this endpoint also covers the supervisor itself.

Every :class:`SupervisorMetrics` has its own registry, so several supervisors in one process
(tests, one server per GPU) never share counters.
"""

from __future__ import annotations

import collections
import json
import logging
import socketserver
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge

LOG = logging.getLogger(__name__)

CAUSES = ("stub_exited", "stub_unhealthy", "canary_failed", "canary_timeout")
# Counters without the extra ``*_created`` series: a scrape shows what the dashboard uses.
prometheus_client.disable_created_metrics()


def _samples(metric: Counter | Gauge, suffix: str = "") -> Iterable[tuple[dict, float]]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == family.name + suffix:
                yield sample.labels, sample.value


class SupervisorMetrics:
    """The supervisor's counters and gauges (thread-safe: prometheus_client's own locks)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        options = {"namespace": "tddfa_supervisor", "registry": self.registry}
        self._failures = Counter(
            "model_failures",
            "Broken Python stubs detected, per model and cause.",
            ["model", "cause"],
            **options,
        )
        self._reloads = Counter(
            "model_reloads",
            "Models reloaded by the supervisor (unload + load) after a failure.",
            ["model"],
            **options,
        )
        self._healthy = Gauge(
            "model_healthy",
            "1 while the model serves, 0 while it is broken or reloading.",
            ["model"],
            **options,
        )
        self._server_up = Gauge(
            "server_up", "1 while tritonserver runs, 0 while it is down or restarting.", **options
        )
        self._restarts = Counter(
            "server_restarts", "tritonserver restarts after it exited unexpectedly.", **options
        )
        self._canary_failures = Counter(
            "canary_failures", "Canary requests that failed.", **options
        )
        self._canary_seconds = Gauge(
            "canary_seconds", "Latency of the last successful canary.", **options
        )

    # -- events -----------------------------------------------------------------------------
    def failure(self, model: str, cause: str) -> None:
        self._failures.labels(model=model, cause=cause).inc()
        self._healthy.labels(model=model).set(0)

    def reloaded(self, model: str) -> None:
        self._reloads.labels(model=model).inc()
        self._healthy.labels(model=model).set(1)

    def set_healthy(self, models: Iterable[str], healthy: bool = True) -> None:
        for model in models:
            self._healthy.labels(model=model).set(int(healthy))

    def server_restarted(self) -> None:
        self._restarts.inc()

    def set_server_up(self, up: bool) -> None:
        self._server_up.set(int(up))

    def canary(self, seconds: float | None) -> None:
        """Record a canary: its latency, or None when it failed."""
        if seconds is None:
            self._canary_failures.inc()
        else:
            self._canary_seconds.set(seconds)

    # -- reading back ---------------------------------------------------------------------
    @property
    def reloads(self) -> collections.Counter[str]:
        """Reloads per model (0 for a model never reloaded)."""
        return collections.Counter(
            {labels["model"]: int(v) for labels, v in _samples(self._reloads, "_total")}
        )

    @property
    def failures(self) -> collections.Counter[tuple[str, str]]:
        """Failures per (model, cause) (0 for a pair never counted)."""
        return collections.Counter(
            {
                (labels["model"], labels["cause"]): int(v)
                for labels, v in _samples(self._failures, "_total")
            }
        )

    @property
    def server_restarts(self) -> int:
        return int(next(v for _, v in _samples(self._restarts, "_total")))

    def broken_models(self) -> list[str]:
        return sorted(labels["model"] for labels, v in _samples(self._healthy) if not v)

    def all_healthy(self) -> bool:
        up = next(v for _, v in _samples(self._server_up))
        return bool(up) and not self.broken_models()

    def summary(self) -> dict:
        return {
            "healthy": self.all_healthy(),
            "server_up": bool(next(v for _, v in _samples(self._server_up))),
            "broken_models": self.broken_models(),
            "model_reloads": dict(self.reloads),
            "server_restarts": self.server_restarts,
        }

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        return prometheus_client.generate_latest(self.registry).decode()


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        LOG.debug("supervisor endpoint: %s", format % args)


def _application(metrics: SupervisorMetrics) -> Callable:
    """WSGI: ``/metrics`` by prometheus_client, ``/health`` the JSON summary."""
    exposition = prometheus_client.make_wsgi_app(metrics.registry)

    def application(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return exposition(environ, start_response)
        if path == "/health":
            summary = metrics.summary()
            body = json.dumps(summary).encode()
            status = "200 OK" if summary["healthy"] else "503 Service Unavailable"
            kind = "application/json"
        else:
            body, status, kind = (
                b"not found: use /metrics or /health\n",
                "404 Not Found",
                "text/plain",
            )
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
        return [body]

    return application


class MetricsServer:
    """``/metrics`` and ``/health`` of :class:`SupervisorMetrics` on ``host:port`` (0: free
    port), served from a daemon thread. Raises OSError when the port cannot be bound."""

    def __init__(self, metrics: SupervisorMetrics, host: str, port: int) -> None:
        self._server = make_server(
            host,
            port,
            _application(metrics),
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
        )
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="supervisor-metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
