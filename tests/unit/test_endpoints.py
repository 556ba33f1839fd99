"""clients/endpoints.py and clients/replicas.py without a server: resolution, rotation,
dead servers, re-resolution, and frames failing over between replicas in order."""

from __future__ import annotations

import concurrent.futures
import socket

import numpy as np
import pytest

from tddfa_clients import replicas
from tddfa_clients.endpoints import Endpoints, is_fixed, resolve, split_url
from tddfa_clients.triton_client import FrameResult, ModelMismatch, ServerUnavailable


def static(table: dict[str, list[str]]):
    """A resolver answering from ``table`` {host: [address, ...]}; unknown names fail."""
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [f"{a}:{port}" for a in table[host]]

    resolver.calls = calls
    return resolver


def test_rotation_takes_dead_servers_out_and_back() -> None:
    now = [0.0]
    pool = Endpoints(
        ["a:1", "b:1", "a:1"], retry_after=10, clock=lambda: now[0], resolver=static({})
    )  # unresolvable names are kept as given
    assert [pool.acquire() for _ in range(4)] == ["a:1", "b:1", "a:1", "b:1"]
    pool.mark_dead("a:1")
    assert {pool.acquire() for _ in range(3)} == {"b:1"}
    now[0] = 3.0
    pool.mark_dead("b:1")  # dead until 13
    now[0] = 5.0
    assert pool.acquire() == "a:1"  # all dead: the one back soonest
    assert pool.live() == []
    now[0] = 10.5
    assert {pool.acquire() for _ in range(4)} == {"a:1"}  # a's penalty is over, b's is not
    pool.mark_alive("b:1")
    assert {pool.acquire() for _ in range(4)} == {"a:1", "b:1"}


def test_a_name_counts_as_every_address_and_is_resolved_again() -> None:
    now = [0.0]
    table = {"triton-headless": ["10.0.0.1", "10.0.0.2"]}
    resolver = static(table)
    pool = Endpoints(["triton-headless:8001"], refresh=30, clock=lambda: now[0], resolver=resolver)
    assert [pool.acquire() for _ in range(4)] == ["10.0.0.1:8001", "10.0.0.2:8001"] * 2
    assert resolver.calls == ["triton-headless"]  # cached until the refresh interval
    table["triton-headless"] = ["10.0.0.2", "10.0.0.3"]  # scaled: a pod replaced
    now[0] = 31.0
    assert set(pool.addresses()) == {"10.0.0.2:8001", "10.0.0.3:8001"}
    del table["triton-headless"]  # the name stops resolving: the last answer is kept
    now[0] = 62.0
    assert set(pool.addresses()) == {"10.0.0.2:8001", "10.0.0.3:8001"}
    assert len(resolver.calls) == 3


def test_literal_addresses_and_local_names_are_not_resolved() -> None:
    resolver = static({})
    pool = Endpoints(["127.0.0.2:8001", "[::1]:8001", "localhost:8001"], resolver=resolver)
    assert pool.addresses() == ["127.0.0.2:8001", "[::1]:8001", "localhost:8001"]
    assert resolver.calls == []
    assert is_fixed("10.1.2.3") and is_fixed("::1") and is_fixed("localhost")
    assert not is_fixed("tddfa-triton-headless.default.svc.cluster.local")


def test_resolve_prefers_ipv4_and_drops_duplicates(monkeypatch) -> None:
    tcp = (socket.SOCK_STREAM, 6, "")
    answers = [
        (socket.AF_INET6, *tcp, ("fd00::1", 8001, 0, 0)),
        (socket.AF_INET, *tcp, ("10.0.0.1", 8001)),
        (socket.AF_INET, *tcp, ("10.0.0.2", 8001)),
        (socket.AF_INET, *tcp, ("10.0.0.1", 8001)),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    assert resolve("svc", 8001) == ["10.0.0.1:8001", "10.0.0.2:8001"]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers[:1])
    assert resolve("svc", 8001) == ["[fd00::1]:8001"]


@pytest.mark.parametrize("bad", ["host", "host:", ":80", "host:http"])
def test_split_url_needs_a_port(bad: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_url(bad)
    assert split_url("grpc://[fd00::1]:8001/") == ("fd00::1", 8001)


# -- ReplicaFrameClient over fake per-address clients -------------------------------------


class FakeClient:
    """Stands in for FrameClient: 'answers' with the frame's value; a server in ``down``
    refuses connections, one in ``dies_after`` fails every request after N."""

    down: set[str] = set()
    dies_after: dict[str, int] = {}
    made: list[str] = []
    sequences: list[tuple[str, int]] = []  # (replica, sequence id) of each sequence started

    def __init__(self, url: str, protocol: str, in_flight: int = 4, **options):
        if url in self.down:
            raise ServerUnavailable(f"server unavailable: failed to connect to {url}")
        if url == "wrong:1":
            raise ModelMismatch("model 'tddfa' is not served at wrong:1")
        self.url, self.in_flight, self.served = url, in_flight, 0
        self.slots_busy: set[int] = set()
        FakeClient.made.append(url)

    def submit(self, image, slot):
        assert slot not in self.slots_busy, f"slot {slot} reused before it was collected"
        self.slots_busy.add(slot)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.served += 1
        if self.served > self.dies_after.get(self.url, 10**9):
            future.set_exception(ServerUnavailable("server unavailable: socket closed"))
        else:
            value = int(image[0, 0, 0])
            future.set_result((value, self.url))
        return slot, {}, future

    def collect(self, pending):
        slot, _, future = pending
        self.slots_busy.discard(slot)
        value, url = future.result()
        rendered = np.full((2, 2, 3), value, np.uint8)
        empty = np.zeros((0, 5), np.float32)
        result = FrameResult(rendered, 0, empty, empty, empty, empty)
        result.url = url
        return result

    def infer_stream(self, items, in_flight=None, sequence_id=None, sequence_parameters=None):
        """A whole sequence on this replica (FrameClient's sequence path)."""
        FakeClient.sequences.append((self.url, sequence_id))
        for key, image in items:
            self.served += 1
            if self.served > self.dies_after.get(self.url, 10**9):
                raise ServerUnavailable("server unavailable: socket closed")
            result = FrameResult(np.array(image), 0, *[np.zeros((0, 5), np.float32)] * 4)
            result.url = self.url
            yield key, result

    def served_models(self):
        return {"regressor": "mb05", "bfm": "approximate"}

    def close(self):
        pass


@pytest.fixture()
def fake_clients(monkeypatch):
    monkeypatch.setattr(replicas, "FrameClient", FakeClient)
    FakeClient.down, FakeClient.dies_after, FakeClient.made = set(), {}, []
    FakeClient.sequences = []
    return FakeClient


def frames(n: int):
    return [(i, np.full((2, 2, 3), i, np.uint8)) for i in range(n)]


def test_frames_are_spread_and_come_back_in_order(fake_clients) -> None:
    pool = Endpoints(["svc:8001"], resolver=static({"svc": ["10.0.0.1", "10.0.0.2"]}))
    with replicas.ReplicaFrameClient(pool, "grpc", in_flight=3) as client:
        results = list(client.infer_stream(frames(10)))
        assert client.served_models()["regressor"] == "mb05"
    assert [k for k, _ in results] == list(range(10))
    assert all(int(r.rendered[0, 0, 0]) == k for k, r in results)
    used = [r.url for _, r in results]
    assert used.count("10.0.0.1:8001") == used.count("10.0.0.2:8001") == 5


def test_a_replica_dying_mid_stream_loses_no_frame(fake_clients) -> None:
    pool = Endpoints(["svc:8001"], resolver=static({"svc": ["10.0.0.1", "10.0.0.2"]}))
    fake_clients.dies_after["10.0.0.2:8001"] = 2  # answers two frames, then fails
    with replicas.ReplicaFrameClient(pool, "grpc", in_flight=4) as client:
        results = list(client.infer_stream(frames(20)))
    assert [k for k, _ in results] == list(range(20))
    assert all(int(r.rendered[0, 0, 0]) == k for k, r in results)
    assert pool.live() == ["10.0.0.1:8001"]  # taken out of rotation
    assert sum(r.url == "10.0.0.2:8001" for _, r in results) == 2


def test_a_replica_down_from_the_start_is_skipped(fake_clients) -> None:
    pool = Endpoints(["svc:8001"], resolver=static({"svc": ["10.0.0.1", "10.0.0.2"]}))
    fake_clients.down.add("10.0.0.1:8001")
    with replicas.ReplicaFrameClient(pool, "http", in_flight=2) as client:
        results = list(client.infer_stream(frames(6)))
    assert {r.url for _, r in results} == {"10.0.0.2:8001"}


def test_no_replica_answering_raises_unavailable(fake_clients) -> None:
    pool = Endpoints(["svc:8001"], resolver=static({"svc": ["10.0.0.1", "10.0.0.2"]}))
    fake_clients.down.update({"10.0.0.1:8001", "10.0.0.2:8001"})
    with replicas.ReplicaFrameClient(pool, "grpc") as client:
        with pytest.raises(ServerUnavailable, match="no server of Endpoints"):
            client.infer(np.zeros((2, 2, 3), np.uint8))


def test_a_model_mismatch_is_not_retried(fake_clients) -> None:
    pool = Endpoints(["wrong:1"], resolver=static({}))
    with replicas.ReplicaFrameClient(pool, "grpc") as client:
        with pytest.raises(ModelMismatch):
            client.infer(np.zeros((2, 2, 3), np.uint8))


def test_open_frame_client_picks_the_transport(fake_clients, monkeypatch) -> None:
    monkeypatch.setattr(replicas, "FrameClient", FakeClient)
    assert isinstance(replicas.open_frame_client("127.0.0.1:8001"), FakeClient)
    assert isinstance(replicas.open_frame_client("localhost", "http"), FakeClient)
    spread = replicas.open_frame_client("tddfa-triton-headless", "grpc")
    assert isinstance(spread, replicas.ReplicaFrameClient)
    assert spread.endpoints.urls == ["tddfa-triton-headless:8001"]


def test_a_frame_failing_everywhere_gives_up_without_orphans(fake_clients) -> None:
    pool = Endpoints(["svc:8001"], resolver=static({"svc": ["10.0.0.1", "10.0.0.2"]}))
    fake_clients.dies_after.update({"10.0.0.1:8001": 0, "10.0.0.2:8001": 0})  # accept, then fail
    with replicas.ReplicaFrameClient(pool, "grpc", in_flight=2) as client:
        with pytest.raises(ServerUnavailable, match="finished the frame"):
            list(client.infer_stream(frames(3)))
        made = {c: None for c in fake_clients.made}
        for address in made:  # every slot given back: nothing left in flight
            assert sorted(client._free_slots[address]) == [0, 1, 2]


def test_a_sequence_stays_on_one_replica_and_restarts_elsewhere(fake_clients) -> None:
    """A tracked video is one Triton sequence: all its frames go to one replica; when that
    replica dies, a new sequence starts on another from the first frame not answered."""
    pool = Endpoints(["svc:8001"], resolver=static({"svc": ["10.0.0.1", "10.0.0.2"]}))
    with replicas.ReplicaFrameClient(pool, "grpc", in_flight=4) as client:
        first = list(client.infer_stream(frames(6), sequence_id=11))
        assert {r.url for _, r in first} == {"10.0.0.1:8001"}  # one replica only
        fake_clients.dies_after["10.0.0.2:8001"] = 3
        second = list(client.infer_stream(frames(10), sequence_id=12))
    assert [k for k, _ in second] == list(range(10))  # in order, none lost
    assert all(int(r.rendered[0, 0, 0]) == k for k, r in second)
    assert [r.url for _, r in second[:3]] == ["10.0.0.2:8001"] * 3
    assert {r.url for _, r in second[3:]} == {"10.0.0.1:8001"}
    (_, a), (dead, b), (survivor, c) = fake_clients.sequences
    assert (a, b) == (11, 12) and dead == "10.0.0.2:8001" and survivor == "10.0.0.1:8001"
    assert c not in (11, 12)  # the restart is a new sequence (the tracker detects afresh)
