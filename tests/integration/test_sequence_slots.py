"""face_tracker under the sequence batcher's *direct* strategy, on a real tritonserver.

The shipped config uses "oldest" (every row of a batch is a frame). A deployment that picks
"direct" gives each sequence a batch slot, and Triton fills the empty slots below a busy one
with null requests whose READY control is 0: those rows must be skipped (no state made for
them, no effect on the real rows). This runs that layout: a sequence in slot 1 keeps going
after the one in slot 0 ended, so each of its frames is batched with a READY=0 row.
"""

from __future__ import annotations

import itertools
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tddfa.contract import SEQUENCE_ENSEMBLE

OUTPUTS = ("FACE_COUNT", "FACE_BOXES", "LANDMARKS", "TRACK_IDS", "DETECTED")
SEQUENCE_IDS = itertools.count(9000)


@pytest.fixture(scope="module")
def direct_server(built_repository: Path, tmp_path_factory, triton_servers):
    """The built repository with face_tracker's sequence batcher switched to "direct"."""
    from tddfa_tools.build.model_config import load_config, save_config

    copy = tmp_path_factory.mktemp("direct") / "model_repository"
    shutil.copytree(built_repository, copy, symlinks=True)
    path = copy / "face_tracker" / "config.pbtxt"
    config = load_config(path)
    config.sequence_batching.direct.SetInParent()  # a oneof: clears "oldest"
    assert config.sequence_batching.WhichOneof("strategy_choice") == "direct"
    save_config(config, path)
    return triton_servers.get(copy)


def _batch_executions(server) -> dict[int, int]:
    """face_tracker's executions by batch size (Triton's statistics)."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics("face_tracker", as_json=True)["model_stats"][0]
    return {
        int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])
    }


def _open_sequences(server) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tddfa_open_sequences{")
    )


def test_ready_0_rows_are_skipped(direct_server, landmark_pipeline, test_images):
    image = test_images["JianzhuGuo.jpg"]
    frames = [image, image[:, ::-1].copy(), image, image[:, ::-1].copy()]
    first, second = next(SEQUENCE_IDS), next(SEQUENCE_IDS)
    with grpcclient.InferenceServerClient(direct_server.grpc_url) as client:

        def send(frame, sequence, start=False, end=False) -> dict:
            tensor = grpcclient.InferInput("IMAGE", [1, *frame.shape], "UINT8")
            tensor.set_data_from_numpy(frame[None])
            result = client.infer(
                SEQUENCE_ENSEMBLE,
                [tensor],
                outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS],
                sequence_id=sequence,
                sequence_start=start,
                sequence_end=end,
            )
            return {n: result.as_numpy(n)[0] for n in OUTPUTS}

        send(image, first, start=True)  # slot 0
        served = [send(frames[0], second, start=True)]  # slot 1
        send(image, first, end=True)  # slot 0 is free from here
        before = _batch_executions(direct_server)
        served += [send(frame, second) for frame in frames[1:-1]]
        # only the live sequence has state: a READY=0 row made none
        assert _open_sequences(direct_server) == 1
        served.append(send(frames[-1], second, end=True))
    # every frame of the second sequence after the first ended ran with slot 0 empty: in a
    # batch of 2 whose first row was Triton's null request (READY = 0). (Triton records an
    # execution's statistics just after its responses: wait for the last one.)
    deadline = time.monotonic() + 10
    while (pairs := _batch_executions(direct_server).get(2, 0) - before.get(2, 0)) < 3:
        assert time.monotonic() < deadline, f"{pairs} batches of 2, expected 3"
        time.sleep(0.1)
    assert pairs == len(frames) - 1
    assert _open_sequences(direct_server) == 0
    sequence = next(SEQUENCE_IDS)
    expected = [
        {n: a[0] for n, a in landmark_pipeline.track(f, sequence, i == 0).items()}
        for i, f in enumerate(frames)
    ]
    for got, want in zip(served, expected, strict=True):
        assert int(got["FACE_COUNT"][0]) == 1 and int(got["TRACK_IDS"][0]) == 1
        assert bool(got["DETECTED"][0]) == bool(want["DETECTED"][0])
        for name in ("FACE_BOXES", "LANDMARKS"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-3)
