"""The errors the clients raise, and the one mapping from tritonclient/socket exceptions."""

from __future__ import annotations

import socket

from tritonclient.utils import InferenceServerException

_TRANSIENT_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "502", "503", "504")
_TRANSIENT_TEXT = (
    "failed to connect",
    "connection refused",
    "socket closed",
    "connect failed",
    "has no available versions",  # the model is (re)loading or the server is stopping
    "is not ready",
    "server is stopping",
)


class ClientError(RuntimeError):
    """Base of the errors this client raises."""


class ServerUnavailable(ClientError):
    """The server cannot be reached or is not ready; retrying later may succeed."""


class InferenceError(ClientError):
    """The server answered the request with an error (bad input, model failure)."""

    def __init__(self, message: str, status: str = ""):
        super().__init__(message)
        self.status = status


class ModelMismatch(ClientError):
    """The served model's inputs/outputs differ from what this client needs."""


class ProtocolMismatch(ClientError):
    """The port answers, but in another protocol (HTTP vs gRPC, or Triton's metrics port)."""


def translate_error(exc: BaseException) -> ClientError:
    """Map a tritonclient/socket exception to ServerUnavailable or InferenceError."""
    if isinstance(exc, ClientError):
        return exc
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = exc.message() or str(exc)
        text = message.lower()
        if "DEADLINE_EXCEEDED" in status or "deadline exceeded" in text:
            return ServerUnavailable(
                f"no answer within the client's timeout ({message}): the server is stuck or "
                "overloaded; raise --timeout if it is only slow"
            )
        if any(s in status for s in _TRANSIENT_STATUS) or any(t in text for t in _TRANSIENT_TEXT):
            return ServerUnavailable(f"server unavailable: {message}")
        return InferenceError(message, status)
    if isinstance(exc, (ConnectionError, socket.timeout, socket.gaierror, OSError)):
        return ServerUnavailable(f"server unavailable: {exc}")
    return ClientError(f"{type(exc).__name__}: {exc}")
