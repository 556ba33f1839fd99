"""Triton's model repository API (index, load, unload) and the few model endpoints the
supervisor needs, through ``tritonclient.http`` with the server's admin token (the repository
API is restricted, :mod:`tddfa_tools.serve.admin_token`).

Every call opens its own client and closes it after: tritonclient's HTTP client is not
thread-safe (it runs on gevent) and the supervisor calls from several threads, and a kept-alive
connection would hold up the server's shutdown (Triton waits for open connections). The calls
are rare (a reload, a canary every 30 s).
"""

from __future__ import annotations

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tddfa_tools.serve.server import TritonServer


class ModelControlError(RuntimeError):
    """Triton's model-control API refused or did not answer."""


class ModelControl:
    """Triton's model repository API over HTTP, with the server's admin token."""

    def __init__(self, server: TritonServer, timeout: float) -> None:
        self._server = server
        self._headers = server.admin_headers("http")
        self._timeout = timeout

    def _client(self, timeout: float | None = None) -> httpclient.InferenceServerClient:
        timeout = self._timeout if timeout is None else timeout
        return httpclient.InferenceServerClient(
            self._server.url, connection_timeout=timeout, network_timeout=timeout
        )

    def _call(self, what: str, method: str, *args: object, **kwargs: object):
        try:
            with self._client() as client:
                return getattr(client, method)(*args, headers=self._headers, **kwargs)
        except InferenceServerException as exc:
            raise ModelControlError(f"{what}: {exc.message() or exc}") from exc
        except OSError as exc:  # refused, reset, timed out
            raise ModelControlError(f"{what}: {exc}") from exc

    def index(self) -> dict[str, str]:
        """{model name: state} of the repository (READY, UNAVAILABLE, LOADING, UNLOADING)."""
        entries = self._call("repository index", "get_model_repository_index")
        return {entry["name"]: entry.get("state", "") for entry in entries}

    def load(self, model: str) -> None:
        self._call(f"load {model}", "load_model", model)

    def unload(self, model: str) -> None:
        self._call(f"unload {model}", "unload_model", model)

    def metadata(self, model: str) -> dict | None:
        """The model's metadata, or None when it is not served."""
        try:
            return self._call(f"metadata of {model}", "get_model_metadata", model)
        except ModelControlError:
            return None

    def config(self, model: str) -> dict:
        """The model's config as JSON, or {} when it is not served."""
        try:
            return self._call(f"config of {model}", "get_model_config", model)
        except ModelControlError:
            return {}

    def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], timeout: float
    ) -> None:
        """One inference (binary tensors) asking for ``outputs``; raises
        InferenceServerException with the server's message when it is refused, OSError
        (TimeoutError included) when the server does not answer within ``timeout``."""
        tensors = []
        for name, array in inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, binary_data=True)
            tensors.append(tensor)
        requested = [httpclient.InferRequestedOutput(n, binary_data=True) for n in outputs]
        with self._client(timeout) as client:
            client.infer(model, tensors, outputs=requested)
