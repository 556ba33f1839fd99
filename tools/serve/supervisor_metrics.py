"""The supervisor's counters and its small HTTP endpoint (Prometheus text format).

``GET /metrics``::

    tddfa_supervisor_model_failures_total{model="face_detector",cause="stub_exited"} 1
    tddfa_supervisor_model_reloads_total{model="face_detector"} 1
    tddfa_supervisor_model_healthy{model="face_detector"} 1
    tddfa_supervisor_server_restarts_total 0
    tddfa_supervisor_canary_failures_total 0
    tddfa_supervisor_canary_seconds 0.084

``GET /health``: 200 with a JSON summary while every model serves, else 503 (a model is
broken or reloading, or the server is down). Triton's own ``/v2/health/ready`` says the same
for the models (``--strict-readiness``), this endpoint also covers the supervisor itself.
"""

from __future__ import annotations

import collections
import http.server
import json
import logging
import threading

LOG = logging.getLogger(__name__)

CAUSES = ("stub_exited", "stub_unhealthy", "canary_failed", "canary_timeout")
_HELP = {
    "tddfa_supervisor_model_failures_total": (
        "counter",
        "Broken Python stubs detected, per model and cause.",
    ),
    "tddfa_supervisor_model_reloads_total": (
        "counter",
        "Models reloaded by the supervisor (unload + load) after a failure.",
    ),
    "tddfa_supervisor_model_healthy": (
        "gauge",
        "1 while the model serves, 0 while it is broken or reloading.",
    ),
    "tddfa_supervisor_server_restarts_total": (
        "counter",
        "tritonserver restarts after it exited unexpectedly.",
    ),
    "tddfa_supervisor_canary_failures_total": ("counter", "Canary requests that failed."),
    "tddfa_supervisor_canary_seconds": ("gauge", "Latency of the last successful canary."),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class SupervisorMetrics:
    """Thread-safe counters of the supervisor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures: collections.Counter[tuple[str, str]] = collections.Counter()
        self.reloads: collections.Counter[str] = collections.Counter()
        self.healthy: dict[str, bool] = {}
        self.server_restarts = 0
        self.server_up = False
        self.canary_failures = 0
        self.canary_seconds = 0.0

    def failure(self, model: str, cause: str) -> None:
        with self._lock:
            self.failures[(model, cause)] += 1
            self.healthy[model] = False

    def reloaded(self, model: str) -> None:
        with self._lock:
            self.reloads[model] += 1
            self.healthy[model] = True

    def set_healthy(self, models: list[str] | set[str], healthy: bool = True) -> None:
        with self._lock:
            for model in models:
                self.healthy[model] = healthy

    def server_restarted(self) -> None:
        with self._lock:
            self.server_restarts += 1

    def set_server_up(self, up: bool) -> None:
        with self._lock:
            self.server_up = up

    def canary(self, seconds: float | None) -> None:
        """Record a canary: its latency, or None when it failed."""
        with self._lock:
            if seconds is None:
                self.canary_failures += 1
            else:
                self.canary_seconds = seconds

    def all_healthy(self) -> bool:
        with self._lock:
            return self.server_up and all(self.healthy.values())

    def summary(self) -> dict:
        with self._lock:
            return {
                "healthy": self.server_up and all(self.healthy.values()),
                "server_up": self.server_up,
                "broken_models": sorted(m for m, ok in self.healthy.items() if not ok),
                "model_reloads": dict(self.reloads),
                "server_restarts": self.server_restarts,
            }

    def render(self) -> str:
        """Prometheus text exposition (version 0.0.4)."""
        with self._lock:
            samples: dict[str, list[str]] = collections.defaultdict(list)
            for (model, cause), count in sorted(self.failures.items()):
                samples["tddfa_supervisor_model_failures_total"].append(
                    f'{{model="{_escape(model)}",cause="{cause}"}} {count}'
                )
            for model, count in sorted(self.reloads.items()):
                samples["tddfa_supervisor_model_reloads_total"].append(
                    f'{{model="{_escape(model)}"}} {count}'
                )
            for model, ok in sorted(self.healthy.items()):
                samples["tddfa_supervisor_model_healthy"].append(
                    f'{{model="{_escape(model)}"}} {int(ok)}'
                )
            samples["tddfa_supervisor_server_restarts_total"].append(f" {self.server_restarts}")
            samples["tddfa_supervisor_canary_failures_total"].append(f" {self.canary_failures}")
            samples["tddfa_supervisor_canary_seconds"].append(f" {self.canary_seconds:.6f}")
        lines = []
        for name, (kind, text) in _HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{sample}" for sample in samples.get(name, [])]
        return "\n".join(lines) + "\n"


class MetricsServer:
    """``/metrics`` and ``/health`` of :class:`SupervisorMetrics` on ``host:port`` (0: free
    port), served from a daemon thread."""

    def __init__(self, metrics: SupervisorMetrics, host: str, port: int) -> None:
        owner = metrics

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status = owner.render().encode(), 200
                    kind = "text/plain; version=0.0.4; charset=utf-8"
                elif path == "/health":
                    summary = owner.summary()
                    body = json.dumps(summary).encode()
                    status = 200 if summary["healthy"] else 503
                    kind = "application/json"
                else:
                    body, status, kind = b"not found: use /metrics or /health\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                LOG.debug("supervisor endpoint: %s", format % args)

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
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
