"""The sequence ensemble `tddfa_track` on a real tritonserver: Triton sequence ids over HTTP
and gRPC, tracking state per sequence in the server, smoothing switched per sequence, clear
errors without a sequence id, and state freed when a client vanishes."""

from __future__ import annotations

import itertools
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from server import model_counts
from tritonclient.utils import InferenceServerException

from tddfa.contract import SEQUENCE_ENSEMBLE
from tddfa_tools.dev.motion_clip import make_clip

OUTPUTS = ("FACE_COUNT", "FACE_BOXES", "LANDMARKS", "POSE", "TRACK_IDS", "DETECTED")
SEQUENCE_IDS = itertools.count(7000)


def send(client, module, frame, sequence_id, start=False, end=False, outputs=OUTPUTS, **kw):
    tensor = module.InferInput("IMAGE", [1, *frame.shape], "UINT8")
    tensor.set_data_from_numpy(frame[None])
    result = client.infer(
        SEQUENCE_ENSEMBLE,
        [tensor],
        outputs=[module.InferRequestedOutput(name) for name in outputs],
        sequence_id=sequence_id,
        sequence_start=start,
        sequence_end=end,
        **kw,
    )
    return {name: result.as_numpy(name)[0] for name in outputs}


def client_for(server, protocol):
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url), httpclient
    return grpcclient.InferenceServerClient(server.grpc_url), grpcclient


@pytest.fixture(scope="module")
def clip(test_images):
    return make_clip(test_images["JianzhuGuo.jpg"], frames=14, still=2, amplitude=8.0).frames


def in_process(landmark_pipeline, frames, **settings):
    sequence = next(SEQUENCE_IDS)
    return [
        {
            n: a[0]
            for n, a in landmark_pipeline.track(f, sequence, i == 0, settings=settings).items()
        }
        for i, f in enumerate(frames)
    ]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_sequence_is_tracked_in_the_server(ensemble_server, landmark_pipeline, clip, protocol):
    client, module = client_for(ensemble_server, protocol)
    sequence = next(SEQUENCE_IDS)
    with client:
        served = [
            send(client, module, f, sequence, start=i == 0, end=i == len(clip) - 1)
            for i, f in enumerate(clip)
        ]
    expected = in_process(landmark_pipeline, clip)
    every = landmark_pipeline.track_config.track_detect_every
    assert [bool(o["DETECTED"][0]) for o in served] == [i % every == 0 for i in range(len(clip))]
    for got, want in zip(served, expected, strict=True):
        assert int(got["FACE_COUNT"][0]) == 1 and int(got["TRACK_IDS"][0]) == 1
        for name in ("FACE_BOXES", "LANDMARKS", "POSE"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-3, err_msg=name)


def test_interleaved_sequences_keep_their_own_state(ensemble_server, test_images, clip):
    """Two clients' frames alternate; each sequence sees only its own history."""
    import cv2

    photo = test_images["trump_hillary.jpg"]  # two faces
    other = cv2.resize(
        photo, (640, 640 * photo.shape[0] // photo.shape[1]), interpolation=cv2.INTER_AREA
    )
    first, second = next(SEQUENCE_IDS), next(SEQUENCE_IDS)
    client, module = client_for(ensemble_server, "grpc")
    with client:
        for i in range(4):
            a = send(client, module, clip[i], first, start=i == 0)
            b = send(client, module, other, second, start=i == 0)
            assert int(a["FACE_COUNT"][0]) == 1 and list(a["TRACK_IDS"][:1]) == [1]
            assert int(b["FACE_COUNT"][0]) == 2 and sorted(b["TRACK_IDS"][:2]) == [1, 2]
            assert bool(a["DETECTED"][0]) == bool(b["DETECTED"][0]) == (i == 0)
        send(client, module, clip[4], first, end=True)
        send(client, module, other, second, end=True)


def test_smoothing_switched_off_per_sequence(ensemble_server, landmark_pipeline, clip):
    client, module = client_for(ensemble_server, "grpc")
    sequence = next(SEQUENCE_IDS)
    with client:
        served = [
            send(
                client,
                module,
                f,
                sequence,
                start=i == 0,
                end=i == len(clip) - 1,
                parameters={"smoothing": False},
            )
            for i, f in enumerate(clip)
        ]
    raw = in_process(landmark_pipeline, clip, smoothing=False)
    smoothed = in_process(landmark_pipeline, clip)
    for got, want in zip(served, raw, strict=True):
        np.testing.assert_allclose(got["LANDMARKS"], want["LANDMARKS"], rtol=1e-5, atol=1e-3)
    differs = max(
        np.abs(g["LANDMARKS"] - s["LANDMARKS"]).max() for g, s in zip(served, smoothed, strict=True)
    )
    assert differs > 0.05


def test_bad_smoothing_parameter_is_refused(ensemble_server, clip):
    client, module = client_for(ensemble_server, "http")
    with client, pytest.raises(InferenceServerException, match="smoothing must be true or false"):
        send(
            client,
            module,
            clip[0],
            next(SEQUENCE_IDS),
            start=True,
            parameters={"smoothing": "maybe"},
        )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_frame_without_sequence_id_gets_a_clear_error(ensemble_server, clip, protocol):
    client, module = client_for(ensemble_server, protocol)
    tensor = module.InferInput("IMAGE", [1, *clip[0].shape], "UINT8")
    tensor.set_data_from_numpy(clip[0][None])
    with client:
        with pytest.raises(InferenceServerException, match="correlation ID"):
            client.infer(SEQUENCE_ENSEMBLE, [tensor])
        assert client.is_model_ready(SEQUENCE_ENSEMBLE)


def _open_sequences(server) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tddfa_open_sequences{")
    ]
    assert values, "the face_tracker gauge tddfa_open_sequences is missing from /metrics"
    return sum(values)


def _wait_open_sequences(server, count: int, within: float) -> float:
    """Poll the gauge until it reads ``count`` or ``within`` s pass; the last reading."""
    deadline = time.monotonic() + within
    while (value := _open_sequences(server)) != count and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


def test_a_vanished_client_is_freed_after_the_idle_timeout(ensemble_server, clip):
    # sequences other tests left open are freed by the same idle timeout (10 s): from none
    # open, this one client's sequence is exactly one
    assert _wait_open_sequences(ensemble_server, 0, within=20) == 0
    client, module = client_for(ensemble_server, "grpc")
    sequence = next(SEQUENCE_IDS)
    with client:
        send(client, module, clip[0], sequence, start=True)
        assert _open_sequences(ensemble_server) == 1
        # the client vanishes: no END. face_tracker's idle timeout is 10 s.
        assert _wait_open_sequences(ensemble_server, 0, within=20) == 0
        # Triton released the sequence too: a frame without START is refused, clearly
        with pytest.raises(InferenceServerException, match="START"):
            send(client, module, clip[1], sequence)


def test_frames_of_several_sequences_batched_together(ensemble_server, landmark_pipeline, clip):
    """Four sequences send their frames at the same moments: the sequence batcher puts
    frames of several sequences in one face_tracker execution (Triton's statistics show
    fewer executions than frames), and each sequence still gets exactly its own tracking:
    the results of running it alone in-process."""
    import threading

    length = 8
    starts = range(4)  # sequence j sees clip[j : j + length]: a mix-up shows in the boxes
    barrier = threading.Barrier(len(starts))
    served: dict[int, list[dict]] = {}
    errors: list[BaseException] = []

    def run(start: int) -> None:
        sequence = next(SEQUENCE_IDS)
        client, module = client_for(ensemble_server, "grpc")
        try:
            with client:
                frames = clip[start : start + length]
                out = []
                for i, frame in enumerate(frames):
                    barrier.wait(timeout=60)
                    out.append(send(client, module, frame, sequence, i == 0, i == length - 1))
                served[start] = out
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            errors.append(exc)
            barrier.abort()

    before = model_counts(ensemble_server, "face_tracker")
    threads = [threading.Thread(target=run, args=(start,)) for start in starts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors[0]
    after = model_counts(ensemble_server, "face_tracker", before[0] + len(starts) * length)
    frames, executions = after[0] - before[0], after[1] - before[1]
    assert frames == len(starts) * length
    assert executions < frames, "no face_tracker execution held frames of two sequences"
    for start in starts:
        expected = in_process(landmark_pipeline, clip[start : start + length])
        for got, want in zip(served[start], expected, strict=True):
            assert int(got["TRACK_IDS"][0]) == 1
            assert bool(got["DETECTED"][0]) == bool(want["DETECTED"][0])
            for name in ("FACE_BOXES", "LANDMARKS", "POSE"):
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-3)
