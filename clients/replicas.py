"""Frames spread over every replica behind a name, answered in order.

:class:`ReplicaFrameClient` has :class:`~tddfa_clients.triton_client.FrameClient`'s interface
(``infer``, ``infer_stream``, ``served_models``, ``close``, context manager) over an
:class:`~tddfa_clients.endpoints.Endpoints` pool: each frame goes to the next live address
(one FrameClient per address, made on first use), results come back in input order, and a
frame whose replica fails as unavailable (connection refused or reset, request timeout,
server stopping) is sent again to another one while that replica is taken out of rotation.
Only when no replica answers does it raise :class:`ServerUnavailable`.

The frames of a Triton sequence (``tddfa_track``) must all reach the server that holds the
sequence's state: :meth:`ReplicaFrameClient.infer_stream` with a ``sequence_id`` sends the
whole sequence to one replica, and if that replica fails it starts a new sequence on another
one from the first frame not yet answered (the tracker then detects afresh).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from tddfa.contract import STATELESS_ENSEMBLE
from tddfa_clients.endpoints import Endpoints
from tddfa_clients.triton_client import (
    FrameClient,
    FrameResult,
    Key,
    ServerUnavailable,
    new_sequence_id,
)

LOG = logging.getLogger(__name__)

Pending = tuple[int, dict, concurrent.futures.Future]


class ReplicaFrameClient:
    """Send frames to every replica behind ``endpoints``.

    Args:
        endpoints: the addresses (shared with other clients when given one instance, so a
            replica one of them found dead is skipped by all).
        protocol: ``http`` or ``grpc``.
        in_flight: requests kept in flight by :meth:`infer_stream`, over all replicas.
        **options: FrameClient arguments for each replica (model, outputs, shared_memory,
            timeout...).
    """

    def __init__(
        self, endpoints: Endpoints, protocol: str = "grpc", in_flight: int = 4, **options: Any
    ):
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        self.endpoints = endpoints
        self.protocol = protocol
        self.in_flight = in_flight
        self._options = options
        self.model = options.get("model", STATELESS_ENSEMBLE)
        self._clients: dict[str, FrameClient] = {}
        self._free_slots: dict[str, list[int]] = {}  # per replica: shared-memory slots free

    def _client(self, address: str) -> FrameClient:
        client = self._clients.get(address)
        if client is None:
            # room for every request in flight plus the one sent again after a failure
            slots = self.in_flight + 1
            client = FrameClient(address, self.protocol, in_flight=slots, **self._options)
            self._clients[address] = client
            self._free_slots[address] = list(range(slots))
        return client

    def _collect_once(self, address: str, client: FrameClient, pending: Pending) -> FrameResult:
        try:
            return client.collect(pending)
        finally:  # answered or failed: the slot's request is over
            self._free_slots[address].append(pending[0])

    def _attempts(self) -> int:
        return len(self.endpoints.addresses()) + 1

    def _submit(self, image: Any) -> tuple[str, FrameClient, Pending]:
        """Start ``image`` on the next live replica; ServerUnavailable when none takes it."""
        error: ServerUnavailable | None = None
        for _ in range(self._attempts()):
            address = self.endpoints.acquire()
            try:
                client = self._client(address)
                slot = self._free_slots[address].pop()
                try:
                    pending = client.submit(image, slot)
                except BaseException:
                    self._free_slots[address].append(slot)
                    raise
            except ServerUnavailable as exc:
                self.endpoints.mark_dead(address)
                error = exc
                continue
            return address, client, pending
        raise ServerUnavailable(f"no server of {self.endpoints} answered: {error}")

    def _collect(self, image: Any, address: str, client: FrameClient, pending: Pending):
        """The result of ``pending``; on an unavailable replica, ``image`` again elsewhere."""
        retries = self._attempts()
        while True:
            try:
                result = self._collect_once(address, client, pending)
            except ServerUnavailable as exc:
                self.endpoints.mark_dead(address)
                retries -= 1
                if retries <= 0:
                    raise ServerUnavailable(
                        f"no server of {self.endpoints} finished the frame: {exc}"
                    ) from exc
                LOG.debug("frame failed on %s (%s); sending it to another server", address, exc)
                address, client, pending = self._submit(image)
                continue
            self.endpoints.mark_alive(address)
            return result

    def infer(self, image: Any) -> FrameResult:
        """One frame, sent to the next live replica."""
        return self._collect(image, *self._submit(image))

    def infer_stream(
        self,
        items: Iterable[tuple[Key, Any]],
        in_flight: int | None = None,
        sequence_id: int | None = None,
        sequence_parameters: dict | None = None,
    ) -> Iterator[tuple[Key, FrameResult]]:
        """Send (key, image) pairs over all replicas with up to ``in_flight`` requests
        pending; yield (key, FrameResult) in input order. With ``sequence_id``: every frame
        to one replica (see the module docstring)."""
        limit = min(in_flight or self.in_flight, self.in_flight)
        if sequence_id is not None:
            yield from self._sequence_stream(items, limit, sequence_id, sequence_parameters)
            return
        pending: deque[tuple[Key, Any, str, FrameClient, Pending]] = deque()
        try:
            for key, image in items:
                if len(pending) >= limit:
                    key_done, image_done, *started = pending.popleft()
                    yield key_done, self._collect(image_done, *started)
                pending.append((key, image, *self._submit(image)))
            while pending:
                key_done, image_done, *started = pending.popleft()
                yield key_done, self._collect(image_done, *started)
        finally:
            for _key, _image, address, client, started in pending:  # error or early exit
                try:
                    self._collect_once(address, client, started)
                except Exception:  # noqa: BLE001  (already failing; only draining here)
                    LOG.debug("dropping the result of an abandoned request", exc_info=True)

    def _sequence_stream(
        self,
        items: Iterable[tuple[Key, Any]],
        limit: int,
        sequence_id: int,
        parameters: dict | None,
    ) -> Iterator[tuple[Key, FrameResult]]:
        unanswered: deque[tuple[Key, Any]] = deque()  # sent to the current replica, no answer yet
        source = iter(items)

        def feed(replayed: list[tuple[Key, Any]]) -> Iterator[tuple[Key, Any]]:
            for item in itertools.chain(replayed, source):
                unanswered.append(item)
                yield item

        replayed: list[tuple[Key, Any]] = []
        for attempt in range(self._attempts()):
            address = self.endpoints.acquire()
            try:
                client = self._client(address)
                for key, result in client.infer_stream(
                    feed(replayed), limit, sequence_id, parameters
                ):
                    unanswered.popleft()
                    yield key, result
                self.endpoints.mark_alive(address)
                return
            except ServerUnavailable as exc:
                self.endpoints.mark_dead(address)
                LOG.warning(
                    "sequence failed on %s (%s): restarting it on another server", address, exc
                )
                replayed, sequence_id = list(unanswered), new_sequence_id()
                unanswered.clear()
                if attempt == self._attempts() - 1:
                    raise
        raise ServerUnavailable(f"no server of {self.endpoints} finished the sequence")

    def served_models(self) -> dict[str, str]:
        """What the next live replica serves (replicas of one Deployment serve the same)."""
        return self._client(self.endpoints.acquire()).served_models()

    @property
    def replicas(self) -> list[str]:
        """The addresses this client has talked to."""
        return list(self._clients)

    def close(self) -> None:
        """Close every replica's client (shared memory regions released first)."""
        clients, self._clients = self._clients, {}
        for address, client in clients.items():
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001  (a dead replica: still close the others)
                LOG.warning("closing the client of %s: %s", address, exc)

    def __enter__(self) -> ReplicaFrameClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_frame_client(
    url: str, protocol: str = "grpc", in_flight: int = 4, **options: Any
) -> FrameClient | ReplicaFrameClient:
    """A client for ``url``: a FrameClient for a literal address or this host (shared memory
    stays possible), else a ReplicaFrameClient over every address the name resolves to."""
    from tddfa_clients.endpoints import is_fixed, split_url
    from tddfa_clients.triton_client import normalize_url

    address = normalize_url(url, protocol)
    if is_fixed(split_url(address)[0]):
        return FrameClient(address, protocol, in_flight=in_flight, **options)
    return ReplicaFrameClient(Endpoints([address]), protocol, in_flight=in_flight, **options)
