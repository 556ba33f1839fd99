"""HTTP JSON inference: Triton 2.51 allocates what the declared shape needs before reading
the values (10.8 GB for [1, 60000, 60000, 3] with three values; more than memory aborts
the server) and narrows out-of-range integers silently. Behind `tddfa guard` (the exposed
deployment of docs/security.md) none of it reaches the server; directly, the small cases
show the server stays sound: answered, and every stub process still the same."""

from __future__ import annotations

import json
import time

import pytest
from adversarial import MODEL, http_infer_json, http_request, no_stub_dies, wait_until_right

pytestmark = pytest.mark.server


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_json_bomb_is_refused_by_the_guard_without_touching_memory(
    ensemble_server, good_request, guard
) -> None:
    """Never sent to the server directly here: it would allocate 10.8 GB on the test host.
    Through the guard it is refused in milliseconds and the server's memory does not move."""
    http_url, _ = guard
    image, expected = good_request
    with no_stub_dies(ensemble_server):
        before = _rss_kb(ensemble_server.process.pid)
        start = time.monotonic()
        status, answer = http_infer_json(http_url, [1, 60000, 60000, 3], [1, 2, 3])
        assert status == 413, answer
        assert "more than" in answer["error"]
        assert time.monotonic() - start < 2
        assert _rss_kb(ensemble_server.process.pid) - before < 50_000  # KB: nothing allocated
        wait_until_right(http_url, image, expected, within=1.0)


def test_oversized_json_body_is_refused_by_the_guard(ensemble_server, guard) -> None:
    http_url, _ = guard
    values = [0] * (700 * 700 * 3)  # a real frame as JSON: ~3 MB of text, over the 1 MB limit
    with no_stub_dies(ensemble_server):
        status, answer = http_infer_json(http_url, [1, 700, 700, 3], values)
        assert status == 413 and "binary data" in answer["error"], answer


def test_out_of_range_values(ensemble_server, good_request, guard) -> None:
    """Directly, Triton keeps the low byte (300 -> 44) and answers; the guard refuses."""
    values = [300] * (32 * 32 * 3)
    image, expected = good_request
    with no_stub_dies(ensemble_server):
        status, answer = http_infer_json(ensemble_server.http_url, [1, 32, 32, 3], values)
        assert status == 200, answer  # narrowed by Triton before any model sees it
        status, answer = http_infer_json(guard[0], [1, 32, 32, 3], values)
        assert status == 400 and "out of range for UINT8" in answer["error"], answer
        wait_until_right(ensemble_server.http_url, image, expected, within=1.0)


def test_small_json_requests_work_directly_and_through_the_guard(ensemble_server, guard):
    for url in (ensemble_server.http_url, guard[0]):
        status, answer = http_infer_json(url, [1, 32, 32, 3], [0] * (32 * 32 * 3))
        assert status == 200, answer
        assert answer["outputs"][0]["data"] == [0]  # FACE_COUNT of a black frame


def test_mismatched_value_count_is_refused(ensemble_server, guard) -> None:
    with no_stub_dies(ensemble_server):
        for url in (ensemble_server.http_url, guard[0]):
            status, answer = http_infer_json(url, [1, 32, 32, 3], [1, 2, 3])
            assert 400 <= status < 600 and answer.get("error"), (url, answer)
        status, _, body = http_request(
            ensemble_server.http_url, "POST", f"/v2/models/{MODEL}/infer", json.dumps({}).encode()
        )
        assert status >= 400 and json.loads(body)["error"]
