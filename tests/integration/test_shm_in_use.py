"""The client's shared-memory release against a real tritonserver: a region a request still
holds inside the server is refused ("it is currently in use"); the client retries and
unregisters it once the request has left, then frees it. (The toy model slow_echo keeps a
request inside the server for as long as the test asks.)"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tddfa_clients.shared_memory import SharedMemorySlot
from tddfa_clients.transport import Transport
from tddfa_clients.triton_client import client_shm_prefix
from tddfa_tools.serve import admin_token

pytestmark = pytest.mark.server

HOLD_S = 2.0  # how long slow_echo keeps the request (and its regions) inside the server


class CountingSlot(SharedMemorySlot):
    """SharedMemorySlot that counts the server's "in use" answers to unregistering."""

    in_use = 0

    def _unregister(self, name: str) -> None:
        try:
            super()._unregister(name)
        except InferenceServerException as exc:
            if "currently in use" in (exc.message() or str(exc)):
                self.in_use += 1
            raise


def _registered(server) -> set[str]:
    with httpclient.InferenceServerClient(server.http_url) as client:
        status = client.get_system_shared_memory_status(
            headers=admin_token.headers(server.process.admin_token, "http")
        )
    return {region["name"] for region in status}


def test_a_region_in_use_is_unregistered_after_its_request_leaves(triton_server):
    transport = Transport("http", triton_server.http_url, concurrency=1, timeout=60)
    slot = CountingSlot(transport, f"{client_shm_prefix()}in_use")
    data = np.arange(16, dtype=np.float32)
    name = slot.ensure("input", data.nbytes)
    slot.write(data)
    tensor = httpclient.InferInput("INPUT", list(data.shape), "FP32")
    tensor.set_shared_memory(name, data.nbytes)
    seconds = httpclient.InferInput("SECONDS", [1], "FP32")
    seconds.set_data_from_numpy(np.array([HOLD_S], np.float32))
    answer: dict = {}

    def request() -> None:
        with httpclient.InferenceServerClient(triton_server.http_url) as client:
            answer["result"] = client.infer("slow_echo", [tensor, seconds]).as_numpy("OUTPUT")

    thread = threading.Thread(target=request)
    sent = time.monotonic()
    thread.start()
    time.sleep(HOLD_S / 4)  # the request is inside the server, holding the region
    slot.close()  # no request of the slot's own in flight: straight to unregistering
    released = time.monotonic()
    thread.join(timeout=60)
    transport.client.close()
    np.testing.assert_array_equal(answer["result"], data)  # the held region was left intact
    assert slot.in_use >= 1, "the server never answered 'in use': nothing was retried"
    assert released - sent >= HOLD_S * 0.9, "unregistered before the request left the server"
    assert slot.abandoned == [] and slot.regions == {}
    assert name not in _registered(triton_server)
