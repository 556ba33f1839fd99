"""Tracking (tddfa.tracking, tddfa.association, tddfa.sequence_store): matching, the
sequence store, and the tracker on real frames with the real networks (in-process).
The tracking targets (jitter, lag, box jumps, identities) are tested through the server:
tests/integration/test_sequences.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tddfa.association import (
    box_from_landmarks,
    box_relative_to,
    iou,
    match_boxes,
    match_identities,
)
from tddfa.sequence_store import SequenceStore
from tddfa_tools.dev.motion_clip import make_clip

SEQUENCE_IDS = itertools.count(1000)


# ---------------------------------------------------------------------------- matching


def test_iou_and_matching():
    a = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], float)
    b = np.array([[102, 100, 112, 110], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    overlap = iou(a, b)
    assert overlap[0, 1] == 1 and overlap[0, 0] == 0
    assert overlap[1, 0] == pytest.approx(80 / 120)
    assert match_boxes(a, b, 0.3) == {0: 1, 1: 0}  # box index -> other index
    assert match_boxes(a, b, 0.9) == {0: 1}


def test_lost_tracks_are_matched_by_position_and_identity():
    detections = np.array([[100, 100, 200, 220], [300, 100, 400, 220]], float)
    expected = np.array([[305, 102, 405, 222], [110, 95, 210, 215]], float)
    close, far = 0.03, 0.5
    distances = np.array([[far, close], [close, far]])
    assert match_identities(detections, expected, distances, 0.3, 0.1) == {0: 1, 1: 0}
    # a different face where a lost one was expected does not take its id ...
    assert match_identities(detections[:1], expected[1:], [[far]], 0.3, 0.1) == {}
    # ... unless identities are not compared
    assert match_identities(detections[:1], expected[1:], [[far]], 0.3, None) == {0: 0}
    # two lost faces expected at one place: identity decides
    both = np.array([[105, 100, 205, 220], [100, 105, 200, 225]], float)
    assert match_identities(detections[:1], both, [[far / 3, close]], 0.3, 0.1) == {0: 1}


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


def track(pipeline, frames, **settings):
    sequence = next(SEQUENCE_IDS)
    outputs = []
    for i, frame in enumerate(frames):
        out = pipeline.track(
            frame, sequence, start=i == 0, end=i == len(frames) - 1, settings=settings
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
    return make_clip(test_images["JianzhuGuo.jpg"], frames=40, still=5, amplitude=8.0)


def test_smoothing_can_be_switched_off_per_sequence(landmark_pipeline, motion_clip):
    frames = motion_clip.frames[10:30]
    on = np.stack([o["LANDMARKS"][0] for o in track(landmark_pipeline, frames)])
    off = np.stack([o["LANDMARKS"][0] for o in track(landmark_pipeline, frames, smoothing=False)])
    np.testing.assert_array_equal(on[0], off[0])  # the first frame has no history
    assert np.abs(on - off).max() > 0.05  # the filter acts on the moving frames


def test_the_identity_is_held_along_a_track(landmark_pipeline, motion_clip):
    frames = motion_clip.frames[5:25]
    shape = slice(12, 52)  # PARAMS: 12 pose, 40 shape, 10 expression
    held = np.stack([o["PARAMS"][0, shape] for o in track(landmark_pipeline, frames)])
    raw = np.stack(
        [o["PARAMS"][0, shape] for o in track(landmark_pipeline, frames, smoothing_identity=False)]
    )
    np.testing.assert_array_equal(held[0], raw[0])
    # each frame's shape is the regressor's; the held one moves a fraction as much
    assert np.abs(np.diff(held, axis=0)).mean() < 0.3 * np.abs(np.diff(raw, axis=0)).mean()


def test_bad_sequence_settings_are_refused(landmark_pipeline, test_images):
    image = test_images["emma.jpg"]
    with pytest.raises(ValueError, match="track_box_blend must be within"):
        landmark_pipeline.track(
            image, next(SEQUENCE_IDS), start=True, settings={"track_box_blend": 2}
        )
    with pytest.raises(ValueError, match="smoothing_motion must be true or false"):
        landmark_pipeline.track(
            image, next(SEQUENCE_IDS), start=True, settings={"smoothing_motion": "maybe"}
        )


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


def test_a_face_the_next_frame_would_drop_starts_no_track(landmark_pipeline, asset_dir):
    # emma720.mp4 pans past a second face that leaves at the right border: the detector
    # still finds it there, but the tracker would drop it on the next frame (its face
    # check fails, or less than half of it is inside). It starts no track: otherwise it
    # flickers in for a frame and every frame after it runs the detector again.
    from tddfa_clients.perf import read_frames

    frames = read_frames(asset_dir / "video" / "emma720.mp4", 215)[136:]
    outputs = track(landmark_pipeline, frames)
    detected = np.array([bool(o["DETECTED"][0]) for o in outputs])
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, detected, 0].astype(int))))[::2]
    assert runs.max() <= 2, f"the detector ran on {runs.max()} frames in a row"
    counts = [int(o["FACE_COUNT"][0]) for o in outputs]
    assert min(counts) >= 1  # Emma is tracked throughout


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
