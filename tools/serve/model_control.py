"""Triton's model repository API (index, load, unload) and the few model endpoints the
supervisor needs, over HTTP with the server's admin token (the repository API is restricted,
:mod:`tddfa_tools.serve.admin_token`)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tddfa_tools.serve.server import TritonServer


class ModelControlError(RuntimeError):
    """Triton's model-control API refused or did not answer."""


class ModelControl:
    """Triton's model repository API over HTTP, with the server's admin token."""

    def __init__(self, server: TritonServer, timeout: float) -> None:
        self._base = f"http://{server.url}"
        self._headers = {"Content-Type": "application/json", **server.admin_headers("http")}
        self._timeout = timeout

    def _call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self._base + path, data=body, method=method, headers=self._headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ModelControlError(f"{method} {path}: {exc}") from exc

    def index(self) -> dict[str, str]:
        """{model name: state} of the repository (READY, UNAVAILABLE, LOADING, UNLOADING)."""
        status, body = self._call("POST", "/v2/repository/index", b"{}")
        if status != 200:
            raise ModelControlError(f"repository index: HTTP {status} {body[:200]!r}")
        return {entry["name"]: entry.get("state", "") for entry in json.loads(body)}

    def _control(self, model: str, action: str) -> None:
        status, body = self._call("POST", f"/v2/repository/models/{model}/{action}", b"{}")
        if status != 200:
            raise ModelControlError(f"{action} {model}: HTTP {status} {body[:300]!r}")

    def load(self, model: str) -> None:
        self._control(model, "load")

    def unload(self, model: str) -> None:
        self._control(model, "unload")

    def metadata(self, model: str) -> dict | None:
        status, body = self._call("GET", f"/v2/models/{model}")
        return json.loads(body) if status == 200 else None

    def config(self, model: str) -> dict:
        status, body = self._call("GET", f"/v2/models/{model}/config")
        return json.loads(body) if status == 200 else {}

    def infer(self, model: str, header: dict, data: bytes, timeout: float) -> tuple[int, dict]:
        """One binary-extension inference; (HTTP status, JSON header of the answer)."""
        text = json.dumps(header).encode()
        request = urllib.request.Request(
            f"{self._base}/v2/models/{model}/infer",
            data=text + data,
            method="POST",
            headers={
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(text)),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
                length = int(response.headers.get("Inference-Header-Content-Length") or len(body))
                return response.status, json.loads(body[:length] or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
