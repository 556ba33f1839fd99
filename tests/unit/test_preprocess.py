"""Frame validation, the rescale rule, the detector canvas and the bilinear resize."""

from __future__ import annotations

import numpy as np
import pytest

from tddfa.config import DETECTOR_MEAN_BGR, PipelineConfig
from tddfa.preprocess import detector_scale, resized_size, to_detector_canvas, validate_image
from tddfa.resize import resize_bilinear, resize_bilinear_u8

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is the resize oracle")

CFG = PipelineConfig()


def _random_image(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_valid_image_passes():
    validate_image(np.zeros((480, 640, 3), np.uint8), CFG)


@pytest.mark.parametrize(
    ("image", "fragments"),
    [
        (np.zeros((2, 640, 3), np.float32), ["uint8 (H, W, 3) RGB", "float32 (2, 640, 3)"]),
        (np.zeros((480, 640), np.uint8), ["uint8 (H, W, 3) RGB", "(480, 640)", "3 channels"]),
        (np.zeros((1, 480, 640, 3), np.uint8), ["(1, 480, 640, 3)", "one frame"]),
        (np.zeros((480, 640, 4), np.uint8), ["4 channels", "alpha"]),
        (np.zeros((480, 640, 1), np.uint8), ["1 channels"]),
        (np.zeros((0, 0, 3), np.uint8), ["empty", "(0, 0, 3)"]),
        (np.zeros((1, 1, 3), np.uint8), ["1x1", "min_image_size"]),
        (np.zeros((4097, 16, 3), np.uint8), ["4097x16", "4096x4096", "downscale"]),
        ([[0, 0, 0]], ["list", "numpy"]),
    ],
    ids=["float", "rank2", "rank4", "rgba", "grey", "empty", "1x1", "too-large", "list"],
)
def test_bad_images_are_refused_with_the_fix(image, fragments):
    with pytest.raises(ValueError) as err:
        validate_image(image, CFG)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_size_limit_is_configurable():
    validate_image(np.zeros((5000, 20, 3), np.uint8), PipelineConfig(max_image_height=5000))
    with pytest.raises(ValueError, match="4000x4000"):
        validate_image(
            np.zeros((4001, 20, 3), np.uint8),
            PipelineConfig(max_image_height=4000, max_image_width=4000),
        )


def test_rescale_rule_matches_reference(reference_dir):
    raw = np.load(reference_dir / "emma_faceboxes_raw.npz")
    scale = detector_scale(1901, 3913, CFG)
    assert scale == pytest.approx(float(raw["scale"]), rel=1e-12)
    assert resized_size(1901, 3913, scale) == tuple(int(d) for d in raw["input_shape"][2:])


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((720, 1280), (607, 1080)), ((360, 640), (360, 640)), ((1080, 1920), (607, 1080))],
)
def test_rescale_rule_sizes(shape, expected):
    assert resized_size(*shape, detector_scale(*shape, CFG)) == expected


def test_small_canvas_shrinks_further():
    cfg = PipelineConfig(canvas_height=360, canvas_width=480)
    height, width = resized_size(720, 1280, detector_scale(720, 1280, cfg))
    assert height <= 360 and width <= 480
    assert width == 480  # width is the binding limit here


@pytest.mark.parametrize("shape", [(1901, 3913), (720, 1280), (300, 500), (1000, 700)])
def test_canvas_equals_original_resize(shape):
    rng = np.random.default_rng(sum(shape))
    image = _random_image(rng, *shape)
    canvas, scale = to_detector_canvas(image, CFG)
    assert canvas.shape == (3, CFG.canvas_height, CFG.canvas_width)
    assert canvas.dtype == np.float32
    height, width = resized_size(*shape, scale)
    if (height, width) == shape:
        expected = image
    else:  # the original: cv2.resize(img, dsize=(int(scale * w), int(scale * h)))
        expected = cv2.resize(image, (width, height))
    np.testing.assert_array_equal(canvas[:, :height, :width], expected.transpose(2, 0, 1))
    pad = np.ones_like(canvas, bool)
    pad[:, :height, :width] = False
    mean_rgb = np.asarray(DETECTOR_MEAN_BGR[::-1], np.float32)[:, None, None]
    np.testing.assert_array_equal(
        canvas[pad], np.broadcast_to(mean_rgb, canvas.shape)[pad], err_msg="padding != mean"
    )


def test_resize_u8_equals_opencv_on_random_images():
    rng = np.random.default_rng(0)
    worst = 0
    for _ in range(60):
        height, width, out_h, out_w = (int(v) for v in rng.integers(1, 200, 4))
        image = _random_image(rng, height, width)
        expected = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        got = resize_bilinear_u8(image, out_h, out_w)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        worst = max(worst, int(np.abs(got.astype(int) - expected).max()))
    assert worst == 0, f"uint8 resize differs from cv2.resize by up to {worst}"


def test_resize_float_equals_opencv_float():
    rng = np.random.default_rng(1)
    for _ in range(20):
        height, width, out_h, out_w = (int(v) for v in rng.integers(1, 200, 4))
        image = _random_image(rng, height, width)
        expected = cv2.resize(image.astype(np.float32), (out_w, out_h))
        np.testing.assert_allclose(resize_bilinear(image, out_h, out_w), expected, atol=0.02)
