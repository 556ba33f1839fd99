"""ROI boxes and the 120x120 crops (docs/models.md 3)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tddfa.roi import crop_and_resize, gather_crops, roi_from_box, roi_from_landmarks

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is the crop oracle")


@pytest.fixture(scope="module")
def emma(asset_dir):
    """emma.jpg as (H, W, 3) uint8 RGB."""
    image = cv2.imread(str(asset_dir / "images" / "emma.jpg"), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(image[..., ::-1])


@pytest.fixture(scope="module")
def faces(reference_dir):
    return json.loads((reference_dir / "emma.json").read_text())["faces"]


def _crop_like_the_original(image, roi, size=120):
    """Integer crop into a zero canvas, then cv2.resize INTER_LINEAR (as 3DDFA_V2)."""
    sx, sy, ex, ey = (int(round(float(v))) for v in roi)
    canvas = np.zeros((ey - sy, ex - sx, 3), np.uint8)
    height, width = image.shape[:2]
    x0, y0, x1, y1 = max(sx, 0), max(sy, 0), min(ex, width), min(ey, height)
    if x1 > x0 and y1 > y0:
        canvas[y0 - sy : y1 - sy, x0 - sx : x1 - sx] = image[y0:y1, x0:x1]
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)


def test_roi_from_box_matches_reference(faces):
    boxes = np.array([face["box"] + [face["score"]] for face in faces], np.float32)
    expected = np.array([face["roi_box"] for face in faces], np.float32)
    rois = roi_from_box(boxes)
    assert rois.shape == (3, 4) and rois.dtype == np.float32
    np.testing.assert_allclose(rois, expected, atol=1e-3)


def test_roi_from_box_shape():
    roi = roi_from_box(np.array([[10, 20, 110, 220]], np.float32))[0]
    old = (100 + 200) / 2
    side = int(old * 1.58)
    assert roi[2] - roi[0] == pytest.approx(side) and roi[3] - roi[1] == pytest.approx(side)
    assert (roi[0] + roi[2]) / 2 == pytest.approx(60)
    assert (roi[1] + roi[3]) / 2 == pytest.approx(120 + 0.14 * old)


def test_roi_from_landmarks_follows_the_tracking_rule(faces):
    landmarks = np.array([face["landmarks"] for face in faces], np.float32)
    rois = roi_from_landmarks(landmarks)
    for roi, points in zip(rois, landmarks, strict=True):
        x0, y0, x1, y1 = points[0].min(), points[1].min(), points[0].max(), points[1].max()
        radius = max(x1 - x0, y1 - y0) / 2
        side = math.sqrt(2) * 2 * radius
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        expected = [
            centre[0] - side / 2,
            centre[1] - side / 2,
            centre[0] + side / 2,
            centre[1] + side / 2,
        ]
        np.testing.assert_allclose(roi, expected, atol=1e-3)


def test_crop_matches_reference_regressor_input(emma, reference_dir):
    ref = np.load(reference_dir / "emma_face0_regressor.npz")
    crops = crop_and_resize(emma, ref["roi_box"][None])
    assert crops.shape == (1, 3, 120, 120) and crops.dtype == np.float32
    expected_rgb = (ref["input"][0] * 128 + 127.5)[::-1]  # BGR normalised -> RGB 0..255
    error = np.abs(crops[0] - expected_rgb).max()
    assert error < 0.01, f"crop differs from the reference input by {error} grey levels"


def test_crops_match_the_original_crop_and_resize(emma):
    height, width = emma.shape[:2]
    rois = np.array(
        [
            [1546.291, 246.899, 2211.291, 911.899],  # inside
            [-50.4, -80.6, 150.2, 120.9],  # over the top-left corner
            [width - 90.5, height - 30.2, width + 60.7, height + 120.3],  # bottom-right
            [width + 10, 10, width + 200, 200],  # entirely outside: black
            [-100, -100, width + 100, height + 100],  # larger than the frame
            [100.2, 200.7, 160.4, 260.1],  # small: upscaled
        ],
        np.float32,
    )
    crops = crop_and_resize(emma, rois)
    worst = 0.0
    for crop, roi in zip(crops, rois, strict=True):
        worst = max(worst, float(np.abs(crop - _crop_like_the_original(emma, roi)).max()))
    assert worst == 0.0, f"crops differ from crop_img + cv2.resize by up to {worst}"
    assert not crops[3].any()


def test_empty_slots_give_zero_crops(emma, faces):
    rois = np.zeros((4, 4), np.float32)
    rois[:2] = [face["roi_box"] for face in faces[:2]]
    crops = crop_and_resize(emma, rois, count=1)
    assert crops.shape == (4, 3, 120, 120)
    assert crops[0].any()
    assert not crops[1:].any()  # slot 1 is past count; slots 2, 3 are empty ROIs


def test_gathered_crops_equal_opencv_crops():
    """CuPy frames are cropped by gathering (gather_crops): on the host that arithmetic must
    give OpenCV's crops bit for bit, over frame sizes, output sizes, rounding ties and boxes
    partly or wholly outside the frame."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        height, width = (int(v) for v in rng.integers(16, 700, 2))
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        size = int(rng.choice([120, 1, 7, 33, 121, 200]))
        starts = np.round(rng.uniform(-60, max(height, width), (16, 2)) * 4) / 4
        sides = np.round(rng.uniform(0.25, 1.5 * max(height, width), (16, 2)) * 4) / 4
        rois = np.concatenate([starts, starts + sides], axis=1).astype(np.float32)
        want = crop_and_resize(frame, rois, size=size)
        got = gather_crops(frame, rois, size, np.zeros_like(want))
        np.testing.assert_array_equal(got, want)
