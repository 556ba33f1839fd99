"""Tracking and smoothing (tddfa.tracking, tddfa.smoothing): the filter's properties, the
sequence store, and the tracker on real frames with the real networks (in-process)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tddfa.smoothing import OneEuroConfig, OneEuroFilter, smoothing_factor
from tddfa.tracking import (
    SequenceStore,
    box_from_landmarks,
    box_relative_to,
    iou,
    match_detections,
)
from tddfa_tools.dev.motion_clip import make_clip, measure

SEQUENCE_IDS = itertools.count(1000)


# ---------------------------------------------------------------------------- One Euro filter


def run_filter(values, config, displacements=None):
    f = OneEuroFilter(config)
    if displacements is None:
        displacements = [0.0] + [abs(b - a) for a, b in zip(values, values[1:], strict=False)]
    return np.array([f(np.array([v]), d)[0] for v, d in zip(values, displacements, strict=True)])


def test_constant_input_passes_unchanged():
    out = run_filter([3.5] * 20, OneEuroConfig())
    np.testing.assert_allclose(out, 3.5)


def test_noise_at_rest_is_reduced():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, 600)
    out = run_filter(noise, OneEuroConfig(min_cutoff=1.0, beta=0.0))
    # an exponential filter of weight a keeps sqrt(a / (2 - a)) of white noise
    a = smoothing_factor(1.0, 30.0)
    assert out[100:].std() == pytest.approx(np.sqrt(a / (2 - a)), rel=0.15)


def test_beta_reduces_lag_on_a_ramp():
    ramp = list(np.arange(60) * 2.0)  # 60 px/s at 30 fps
    lags = [ramp[-1] - run_filter(ramp, OneEuroConfig(beta=b))[-1] for b in (0.0, 0.05, 0.5)]
    assert lags[0] > lags[1] > lags[2] > 0


def test_bad_filter_settings_are_refused():
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroConfig(min_cutoff=0)
    with pytest.raises(ValueError, match="beta"):
        OneEuroConfig(beta=-1)


# ---------------------------------------------------------------------------- helpers, store


def test_iou_and_greedy_matching():
    a = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], float)
    b = np.array([[102, 100, 112, 110], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    overlap = iou(a, b)
    assert overlap[0, 1] == 1 and overlap[0, 0] == 0
    assert overlap[1, 0] == pytest.approx(80 / 120)
    assert match_detections(a, b, 0.3) == {0: 1, 1: 0}  # detection index -> track index
    assert match_detections(a, b, 0.9) == {1: 0}


def test_box_relative_to_landmarks_round_trips():
    rng = np.random.default_rng(1)
    landmarks = np.stack(
        [rng.uniform(100, 200, 68), rng.uniform(50, 180, 68), rng.uniform(0, 9, 68)]
    )
    box = np.array([90.0, 30.0, 215.0, 190.0, 0.99])
    relative = box_relative_to(box, landmarks)
    np.testing.assert_allclose(box_from_landmarks(relative, landmarks), box[:4], atol=1e-4)
    moved = landmarks + np.array([[7.5], [-3.0], [0.0]])  # the face moved: so does its box
    np.testing.assert_allclose(
        box_from_landmarks(relative, moved), box[:4] + [7.5, -3.0, 7.5, -3.0], atol=1e-4
    )


def test_store_starts_ends_and_frees_idle_sequences():
    now = [0.0]
    store = SequenceStore(idle_timeout=5.0, clock=lambda: now[0])
    first = store.get(1, start=True)
    first.frames = 3
    assert store.get(1, start=False) is first  # later frames see the same state
    assert store.get(1, start=True) is not first  # START begins afresh
    store.get(2, start=True)
    now[0] = 4.0
    store.get(2, start=False)
    now[0] = 9.5  # sequence 1 idle for 9.5 s, sequence 2 for 5.5 s
    assert store.sweep() == 2 and len(store) == 0
    store.get(3, start=True)
    store.end(3)
    assert len(store) == 0
    with pytest.raises(ValueError, match="idle_timeout"):
        SequenceStore(idle_timeout=0)


# ---------------------------------------------------------------------------- the tracker


def track(pipeline, frames, smoothing=None):
    sequence = next(SEQUENCE_IDS)
    outputs = []
    for i, frame in enumerate(frames):
        out = pipeline.track(
            frame, sequence, start=i == 0, end=i == len(frames) - 1, smoothing=smoothing
        )
        outputs.append({name: array[0] for name, array in out.items()})
    return outputs


def test_still_frames_equal_per_frame_results_and_skip_the_detector(landmark_pipeline, test_images):
    image = test_images["emma.jpg"]
    every = landmark_pipeline.track_config.track_detect_every
    outputs = track(landmark_pipeline, [image] * (every + 2))
    per_frame = landmark_pipeline(image)
    count = int(per_frame["FACE_COUNT"][0, 0])
    assert [bool(o["DETECTED"][0]) for o in outputs] == [True] + [False] * (every - 1) + [
        True,
        False,
    ]
    for out in outputs:  # no drift: tracked crops equal the detection crops on still frames
        assert int(out["FACE_COUNT"][0]) == count
        assert sorted(out["TRACK_IDS"][:count]) == list(range(1, count + 1))
        order = np.argsort(out["TRACK_IDS"][:count])
        got = out["LANDMARKS"][:count][order]
        np.testing.assert_allclose(got, per_frame["LANDMARKS"][0, :count], atol=1e-3)


@pytest.fixture(scope="module")
def motion_clip(test_images):
    return make_clip(test_images["JianzhuGuo.jpg"], frames=90, still=15, amplitude=8.0)


def test_tracking_and_smoothing_halve_jitter_without_lag(landmark_pipeline, motion_clip):
    per_frame = np.stack([landmark_pipeline(f)["LANDMARKS"][0, 0] for f in motion_clip.frames])
    outputs = track(landmark_pipeline, motion_clip.frames)
    tracked = np.stack([o["LANDMARKS"][0] for o in outputs])
    assert {int(o["TRACK_IDS"][0]) for o in outputs} == {1}  # one face, one id
    baseline, smooth = (
        measure(per_frame, motion_clip.affines),
        measure(tracked, motion_clip.affines),
    )
    assert smooth.jitter <= 0.5 * baseline.jitter, (smooth, baseline)
    assert smooth.spread <= 1.2 * baseline.spread, (smooth, baseline)


def test_smoothing_can_be_switched_off_per_sequence(landmark_pipeline, motion_clip):
    frames = motion_clip.frames[10:30]
    on = np.stack([o["LANDMARKS"][0] for o in track(landmark_pipeline, frames)])
    off = np.stack([o["LANDMARKS"][0] for o in track(landmark_pipeline, frames, smoothing=False)])
    np.testing.assert_array_equal(on[0], off[0])  # the first frame has no history
    assert np.abs(on - off).max() > 0.05  # the filter acts on the moving frames


def _scene(background, faces):
    frame = background.copy()
    for face, (x, y) in faces:
        frame[y : y + face.shape[0], x : x + face.shape[1]] = face
    return frame


def test_faces_entering_and_leaving_keep_their_ids(landmark_pipeline, test_images):
    import cv2

    face = test_images["JianzhuGuo.jpg"]
    a = cv2.resize(face, (150, 200), interpolation=cv2.INTER_AREA)
    b = np.ascontiguousarray(a[:, ::-1])  # a second face: the mirror image
    background = np.full((300, 640, 3), 110, np.uint8)
    every = landmark_pipeline.track_config.track_detect_every
    frames = (
        [_scene(background, [(a, (40, 50))])] * every  # A alone
        + [_scene(background, [(a, (40, 50)), (b, (420, 60))])] * every  # B enters
        + [_scene(background, [(b, (420, 60))])] * (every + 2)  # A leaves
    )
    outputs = track(landmark_pipeline, frames)
    ids = [sorted(int(i) for i in o["TRACK_IDS"][: int(o["FACE_COUNT"][0])]) for o in outputs]
    assert ids[:every] == [[1]] * every
    assert ids[every : 2 * every] == [[1, 2]] * every  # B is found at the next detection
    # A's track ends at the latest at the next detection; B keeps its id throughout
    assert ids[-2:] == [[2], [2]]
    assert all(2 in frame_ids for frame_ids in ids[every:])


def test_a_face_leaving_the_frame_is_lost_and_redetected(landmark_pipeline, test_images):
    import cv2

    face = cv2.resize(test_images["JianzhuGuo.jpg"], (150, 200), interpolation=cv2.INTER_AREA)
    background = np.full((300, 640, 3), 110, np.uint8)
    frames = []
    for x in (200, 260, 330, 410, 500, 600, 640):  # slides out to the right
        frame = background.copy()
        visible = face[:, : max(0, 640 - x)]
        frame[50:250, x : x + visible.shape[1]] = visible
        frames.append(frame)
    outputs = track(landmark_pipeline, frames)
    assert int(outputs[0]["FACE_COUNT"][0]) == 1
    assert int(outputs[-1]["FACE_COUNT"][0]) == 0  # gone: no ghost face is reported
    # the frame that lost the face was redone by the detector
    assert any(bool(o["DETECTED"][0]) for o in outputs[1:])


def test_a_batch_holding_one_sequence_twice_runs_its_frames_in_order(
    landmark_pipeline, test_images
):
    """TrackerStep given a batch that repeats a sequence (Triton's sequence batcher never
    does; another caller may) and a READY = 0 row: the repeated sequence's frames run one
    after the other, the other sequence beside them, the READY = 0 row stays zero and makes
    no state; the results equal sending each frame alone."""
    image = test_images["JianzhuGuo.jpg"]
    frames = np.stack([image, image[:, ::-1], image, image])
    a, b, idle = next(SEQUENCE_IDS), next(SEQUENCE_IDS), next(SEQUENCE_IDS)
    step = landmark_pipeline.tracker
    opened = len(step.store)
    batch = {
        "IMAGE": frames,
        "START": np.array([[1], [0], [1], [0]], np.int32),
        "END": np.array([[0], [1], [1], [0]], np.int32),
        "READY": np.array([[1], [1], [1], [0]], np.int32),
        "CORRID": np.array([[a], [a], [b], [idle]], np.uint64),
    }
    step.validate(batch)
    out = step.run(batch, parameters=[{}] * 4)
    assert len(step.store) == opened, "sequences left open (or a state for the READY=0 row)"
    first = next(SEQUENCE_IDS)
    alone = [
        landmark_pipeline.track(frames[0], first, start=True),
        landmark_pipeline.track(frames[1], first, end=True),
        landmark_pipeline.track(frames[2], next(SEQUENCE_IDS), start=True, end=True),
    ]
    for row, want in enumerate(alone):
        assert bool(out["DETECTED"][row, 0]) == bool(want["DETECTED"][0, 0])
        for name in ("FACE_COUNT", "TRACK_IDS", "FACE_BOXES", "LANDMARKS"):
            np.testing.assert_allclose(out[name][row], want[name][0], atol=1e-3, err_msg=name)
    assert not out["FACE_COUNT"][3].any() and not out["LANDMARKS"][3].any()
