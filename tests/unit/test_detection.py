"""Prior boxes, box decoding, greedy NMS and face selection (docs/models.md 1)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from tddfa.config import DETECTOR_MIN_SIZES, DETECTOR_STEPS, PipelineConfig
from tddfa.detection import decode_boxes, nms, select_faces
from tddfa.priors import prior_boxes


def _priors_by_the_book(height, width):
    """docs/models.md 1 written as loops, the way the original iterates."""
    anchors = []
    for step, min_sizes in zip(DETECTOR_STEPS, DETECTOR_MIN_SIZES, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        for i, j in itertools.product(range(rows), range(cols)):
            for size in min_sizes:
                offsets = {32: (0, 0.25, 0.5, 0.75), 64: (0, 0.5)}.get(size, (0.5,))
                for oy, ox in itertools.product(offsets, offsets):
                    anchors.append(
                        [
                            (j + ox) * step / width,
                            (i + oy) * step / height,
                            size / width,
                            size / height,
                        ]
                    )
    return np.asarray(anchors, np.float32)


@pytest.mark.parametrize("shape", [(524, 1080), (100, 37), (64, 64)])
def test_priors_match_the_definition(shape):
    np.testing.assert_array_equal(prior_boxes(*shape), _priors_by_the_book(*shape))


def test_priors_are_cached_and_read_only():
    priors = prior_boxes(720, 1280)
    assert priors is prior_boxes(720, 1280)
    assert priors.shape == (19620, 4) and priors.dtype == np.float32
    assert not priors.flags.writeable
    assert prior_boxes(524, 1080).shape == (12336, 4)


def test_decode_zero_offsets_give_the_priors():
    priors = np.array([[0.5, 0.25, 0.1, 0.2]], np.float32)
    boxes = decode_boxes(np.zeros((1, 4), np.float32), priors, (100, 200), scale=0.5)
    # centre (100, 25) px, size (20, 20) px on the input; / 0.5 to the original frame
    np.testing.assert_allclose(boxes, [[180, 30, 220, 70]], rtol=1e-6)


def test_decode_uses_the_variances():
    priors = np.array([[0.5, 0.5, 0.1, 0.1]], np.float32)
    loc = np.array([[1.0, -1.0, math.log(2) / 0.2, 0.0]], np.float32)
    boxes = decode_boxes(loc, priors, (100, 100))
    # centre moves by 0.1 * 0.1 * 100 = 1 px; width doubles to 20 px
    np.testing.assert_allclose(boxes, [[41, 44, 61, 54]], rtol=1e-5)


def test_reference_detections(reference_dir):
    raw = np.load(reference_dir / "emma_faceboxes_raw.npz")
    faces = json.loads((reference_dir / "emma.json").read_text())["faces"]
    height, width = (int(d) for d in raw["input_shape"][2:])
    boxes, count = select_faces(
        raw["loc"][0],
        raw["conf"][0],
        prior_boxes(height, width),
        float(raw["scale"]),
        PipelineConfig(),
        input_size=(height, width),
    )
    assert count == len(faces) == 3
    assert boxes.shape == (PipelineConfig().max_faces, 5) and boxes.dtype == np.float32
    expected = np.array([face["box"] + [face["score"]] for face in faces], np.float32)
    box_error = np.abs(boxes[:count, :4] - expected[:, :4]).max()
    score_error = np.abs(boxes[:count, 4] - expected[:, 4]).max()
    assert box_error < 1.0, f"boxes off by {box_error} px"
    assert score_error < 1e-3
    assert not boxes[count:].any()


def test_reference_detections_are_capped_at_k(reference_dir):
    raw = np.load(reference_dir / "emma_faceboxes_raw.npz")
    height, width = (int(d) for d in raw["input_shape"][2:])
    full, _ = select_faces(
        raw["loc"][0],
        raw["conf"][0],
        prior_boxes(height, width),
        float(raw["scale"]),
        PipelineConfig(),
        input_size=(height, width),
    )
    boxes, count = select_faces(
        raw["loc"][0],
        raw["conf"][0],
        prior_boxes(height, width),
        float(raw["scale"]),
        PipelineConfig(max_faces=2),
        input_size=(height, width),
    )
    assert count == 2 and boxes.shape == (2, 5)
    np.testing.assert_array_equal(boxes, full[:2])


# ---- NMS edge cases -------------------------------------------------------------------


def test_nms_iou_uses_inclusive_pixels_and_suppresses_at_the_threshold():
    # 13 x 10 pixel boxes (inclusive) overlapping by 6 columns: IoU = 60 / 200 = 0.3
    # exactly; with exclusive areas it would be 45 / 171 = 0.26 and both would survive.
    boxes = np.array([[0, 0, 12, 9], [7, 0, 19, 9]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, 0.3), [0])
    # one more column apart: IoU = 50 / 210 < 0.3, both kept
    boxes[1] += [1, 0, 1, 0]
    np.testing.assert_array_equal(nms(boxes, scores, 0.3), [0, 1])


def test_nms_orders_by_score_and_breaks_ties_by_index():
    boxes = np.array([[0, 0, 9, 9], [100, 0, 109, 9], [200, 0, 209, 9], [0, 0, 9, 9]], np.float32)
    scores = np.array([0.5, 0.9, 0.5, 0.5], np.float32)
    # box 3 duplicates box 0 (same score, later index): suppressed by it
    np.testing.assert_array_equal(nms(boxes, scores, 0.3), [1, 0, 2])


def test_nms_is_greedy():
    # A overlaps B, B overlaps C, A and C do not: B is suppressed, so C survives.
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [10, 0, 19, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, 0.3), [0, 2])


def test_nms_max_keep_and_empty_input():
    boxes = np.array([[i * 20, 0, i * 20 + 9, 9] for i in range(5)], np.float32)
    scores = np.linspace(0.9, 0.5, 5).astype(np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, 0.3, max_keep=2), [0, 1])
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.3).size == 0


# ---- face selection on synthetic detector outputs --------------------------------------


def _synthetic_detections(scores_by_cell, canvas=256):
    """Zero offsets (boxes = priors) and given face scores on the first anchor of cells."""
    priors = prior_boxes(canvas, canvas)
    conf = np.zeros((len(priors), 2), np.float32)
    conf[:, 0] = 1
    per_cell = 21  # source 1 anchors per cell
    cells_per_row = canvas // DETECTOR_STEPS[0]
    index = {}
    for (row, col), score in scores_by_cell.items():
        i = (row * cells_per_row + col) * per_cell  # the cell's first 32-px anchor
        conf[i] = [1 - score, score]
        index[(row, col)] = i
    return np.zeros((len(priors), 4), np.float32), conf, priors, index


def test_select_faces_truncates_to_k_best():
    scores = {(0, 0): 0.6, (0, 4): 0.9, (4, 0): 0.7, (4, 4): 0.8, (2, 2): 0.4}
    loc, conf, priors, index = _synthetic_detections(scores)
    cfg = PipelineConfig(canvas_height=256, canvas_width=256, max_faces=2)
    boxes, count = select_faces(loc, conf, priors, 0.5, cfg)
    assert count == 2
    np.testing.assert_allclose(boxes[:, 4], [0.9, 0.8], rtol=1e-6)
    expected = decode_boxes(loc[[index[(0, 4)]]], priors[[index[(0, 4)]]], (256, 256), 0.5)
    np.testing.assert_allclose(boxes[0, :4], expected[0], rtol=1e-6)
    # box of the (0, 4) cell: prior centre (128, 0) px, 32 px wide, divided by the scale
    np.testing.assert_allclose(boxes[0, :4], [224, -32, 288, 32], rtol=1e-6)


def test_select_faces_applies_the_score_threshold():
    scores = {(0, 0): 0.6, (0, 4): 0.9, (4, 0): 0.7, (4, 4): 0.8, (2, 2): 0.4}
    loc, conf, priors, _ = _synthetic_detections(scores)
    cfg = PipelineConfig(canvas_height=256, canvas_width=256, max_faces=8)
    boxes, count = select_faces(loc, conf, priors, 1.0, cfg)
    assert count == 4  # 0.4 is below score_threshold
    np.testing.assert_allclose(boxes[:4, 4], [0.9, 0.8, 0.7, 0.6], rtol=1e-6)
    assert not boxes[4:].any()


def test_select_faces_with_no_detection():
    loc, conf, priors, _ = _synthetic_detections({})
    cfg = PipelineConfig(canvas_height=256, canvas_width=256)
    boxes, count = select_faces(loc, conf, priors, 1.0, cfg)
    assert count == 0
    assert boxes.shape == (cfg.max_faces, 5) and not boxes.any()


def test_select_faces_rejects_mismatched_priors():
    loc, conf, _, _ = _synthetic_detections({})
    with pytest.raises(ValueError, match="priors"):
        select_faces(loc, conf, prior_boxes(128, 128), 1.0, PipelineConfig())


# ---- a batch of frames -------------------------------------------------------------------


def _random_detections(rng, batch, canvas, faces_per_frame):
    """Detector-like outputs: clusters of overlapping high-score priors around a few faces."""
    priors = prior_boxes(canvas, canvas)
    loc = rng.normal(0, 0.3, (batch, len(priors), 4)).astype(np.float32)
    conf = np.zeros((batch, len(priors), 2), np.float32)
    score = rng.uniform(0, 0.3, (batch, len(priors))).astype(np.float32)
    for b in range(batch):
        for _ in range(faces_per_frame):
            centre = rng.uniform(0, 1, 2)
            near = np.abs(priors[:, :2] - centre).max(axis=1) < 0.08
            score[b, near] = rng.uniform(0.4, 1.0, near.sum())
    score[:, 7] = score[:, 9] = 0.75  # a tie: the lower index comes first
    conf[..., 1] = score
    conf[..., 0] = 1 - score
    return loc, conf, priors


@pytest.mark.parametrize(
    "cfg",
    [
        PipelineConfig(canvas_height=256, canvas_width=256),
        PipelineConfig(canvas_height=256, canvas_width=256, max_faces=3),
        PipelineConfig(canvas_height=256, canvas_width=256, pre_nms_top_k=40),
        PipelineConfig(canvas_height=256, canvas_width=256, nms_iou_threshold=0.6),
        PipelineConfig(canvas_height=256, canvas_width=256, post_nms_top_k=2),
    ],
    ids=["default", "k3", "pre-nms-cap", "iou0.6", "post-nms-cap"],
)
def test_batch_selection_equals_per_frame_selection(cfg):
    """select_faces_per_frame (the CPU Detector's batch form) is select_faces on each frame;
    the detections hold ties, clusters and a frame without a face."""
    from tddfa.detection import select_faces_per_frame

    rng = np.random.default_rng(cfg.max_faces + cfg.pre_nms_top_k)
    loc, conf, priors = _random_detections(rng, 4, 256, faces_per_frame=5)
    conf[2, :, 1] = 0.1  # a frame without any face
    boxes, counts = select_faces_per_frame(loc, conf, priors, 0.37, cfg)
    assert boxes.shape == (4, cfg.max_faces, 5) and boxes.dtype == np.float32
    assert counts.shape == (4,) and counts.dtype == np.int32
    assert counts[2] == 0 and not boxes[2].any()
    for b in range(4):
        want, count = select_faces(loc[b], conf[b], priors, 0.37, cfg)
        assert counts[b] == count
        np.testing.assert_array_equal(boxes[b], want)
    assert counts.max() > 1
