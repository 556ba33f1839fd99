"""The parts of tracked-face smoothing, without the networks: the constant-velocity Kalman
filter (tddfa.filters), the held identity (tddfa.identity), the image motion
(tddfa.image_motion) and the parameter-space face filter (tddfa.smoothing)."""

from __future__ import annotations

import numpy as np
import pytest

from tddfa import image_motion
from tddfa.filters import ConstantVelocityKalman
from tddfa.identity import IdentityEstimate, identity_distance
from tddfa.smoothing import FaceFilter, FaceGeometry, SmoothingConfig, crop_scale

# ---------------------------------------------------------------------------- Kalman filter


def run_kalman(measurements, noise=0.5, acceleration=0.05, gate=2.5, displacements=None):
    """Filter a 1-D series; returns the filtered positions."""
    kalman = ConstantVelocityKalman(
        np.array([measurements[0]]), np.array([noise]), np.array([2.0]), np.zeros(1, int)
    )
    out = [measurements[0]]
    for t in range(1, len(measurements)):
        moved = None if displacements is None else np.array([displacements[t]])
        kalman.predict(np.array([acceleration]), moved, np.array([0.05]))
        kalman.update(np.array([measurements[t]]), np.array([noise]), gate)
        out.append(kalman.position[0])
    return np.array(out)


def test_constant_input_passes_unchanged():
    np.testing.assert_array_equal(run_kalman([3.5] * 30), 3.5)


def test_noise_at_rest_is_reduced():
    noise = np.random.default_rng(0).normal(0, 0.5, 400)
    out = run_kalman(noise)
    assert out[100:].std() < 0.6 * noise[100:].std()


def test_constant_velocity_is_followed_without_lag():
    ramp = np.arange(120) * 2.5  # a face moving 2.5 px a frame
    noisy = ramp + np.random.default_rng(1).normal(0, 0.5, len(ramp))
    error = run_kalman(noisy)[60:] - ramp[60:]
    assert abs(error.mean()) < 0.1  # no lag
    assert error.std() < 0.5 * 0.5  # and less noise than the measurements
    # a low-pass filter of comparable smoothing lags by several pixels
    low_pass = np.zeros_like(noisy)
    for t in range(1, len(noisy)):
        low_pass[t] = low_pass[t - 1] + 0.2 * (noisy[t] - low_pass[t - 1])
    assert (ramp[60:] - low_pass[60:]).mean() > 5


def test_measured_displacement_follows_any_motion():
    t = np.arange(150)
    path = 30 * np.sin(t / 8.0) + np.where(t > 70, 40.0, 0.0)  # swings and a sudden jump
    noisy = path + np.random.default_rng(2).normal(0, 0.5, len(t))
    error = run_kalman(noisy, displacements=np.diff(path, prepend=path[0])) - path
    assert np.abs(error[20:]).mean() < 0.15  # no lag even through the jump, little noise


def test_the_gate_raises_the_gain_after_a_sudden_move():
    steps = np.where(np.arange(60) >= 20, 30.0, 0.0)
    gated = run_kalman(steps, gate=2.5)
    ungated = run_kalman(steps, gate=1e9)
    assert abs(gated[25] - 30) < 0.5 * abs(ungated[25] - 30)


# ---------------------------------------------------------------------------- identity


def test_identity_converges_and_resists_outliers():
    rng = np.random.default_rng(3)
    scale = np.full(40, 2.0)
    truth = rng.normal(0, 2.0, 40)
    estimate = IdentityEstimate(scale)
    for _ in range(50):
        held = estimate.update(truth + rng.normal(0, 0.08, 40))
    assert identity_distance(held, truth, scale) < 0.01  # per-frame noise is 0.04
    before = held.copy()
    held = estimate.update(truth + 5.0)  # a frame of something else
    # a plain mean of 51 frames would move by 5/51 per coefficient; Huber weights move less
    assert np.abs(held - before).max() < 0.25 * 5.0 / 51
    assert estimate.distance(truth + 5.0) == pytest.approx(2.5, rel=0.01)


# ---------------------------------------------------------------------------- image motion


@pytest.fixture(scope="module")
def face_crop(test_images):
    """A 200x200 gray patch around JianzhuGuo's face, float32."""
    image = test_images["JianzhuGuo.jpg"].astype(np.float32).mean(axis=2)
    return image[100:300, 105:305]


def shifted(patch, dx, dy, size=120):
    import cv2

    matrix = np.array([[1.0, 0, dx], [0, 1.0, dy]])
    moved = cv2.warpAffine(patch, matrix, patch.shape[::-1], flags=cv2.INTER_LINEAR)
    offset = (patch.shape[0] - size) // 2
    return moved[offset : offset + size, offset : offset + size]


@pytest.mark.parametrize("dx, dy", [(0.3, -0.2), (2.6, 1.4), (-7.25, 4.5)])
def test_crop_shift_measures_subpixel_motion(face_crop, dx, dy):
    previous, current = shifted(face_crop, 0, 0), shifted(face_crop, dx, dy)
    shift, peak = image_motion.crop_shift(previous[None], current[None])
    # a few hundredths of a pixel: the bilinear resampling that shifted it blurs a little
    np.testing.assert_allclose(shift[0], [dx, dy], atol=0.06)
    assert 0.3 < peak[0] < 1.0


def test_identical_crops_have_no_motion_and_full_peak(face_crop):
    crop = shifted(face_crop, 0, 0)
    shift, peak = image_motion.crop_shift(crop[None], crop[None])
    np.testing.assert_allclose(shift, 0.0, atol=1e-9)
    assert peak[0] == pytest.approx(1.0)
    noise = np.random.default_rng(4).uniform(0, 255, crop.shape).astype(np.float32)
    assert image_motion.crop_shift(crop[None], noise[None])[1][0] < 0.2  # nothing in common


def test_displacement_maps_crop_shift_to_the_frame():
    previous_roi = np.array([[100.0, 50.0, 220.0, 170.0]])  # 1 image px per crop px
    roi = np.array([[110.0, 40.0, 350.0, 280.0]])  # 2 image px per crop px, moved
    point = np.array([[160.0, 110.0]])
    # the content did not move in the image: the crop shift is what the ROI change implies
    u_before = point + 0.5 - previous_roi[:, :2] - 0.5
    u_after = (point + 0.5 - roi[:, :2]) / 2 - 0.5
    still = image_motion.displacement(point, previous_roi, roi, u_after - u_before, 120)
    np.testing.assert_allclose(still, 0.0, atol=1e-9)
    moved = image_motion.displacement(point, previous_roi, roi, u_after - u_before + 1.5, 120)
    np.testing.assert_allclose(moved, 3.0, atol=1e-9)  # 1.5 crop px = 3 image px


# ---------------------------------------------------------------------------- face filter


@pytest.fixture(scope="module")
def geometry(built_repository):
    from tddfa.bfm import load_bfm

    return FaceGeometry.from_bfm(load_bfm(built_repository / "face_aligner" / "1" / "bfm.npz"))


def face_transform(shift_x=0.0):
    scale = 1.5e-3
    return np.array(
        [[scale, 0, 0, 200.0 + shift_x], [0, -scale, 0, 150.0], [0, 0, scale, 10.0]], np.float32
    )


def test_face_filter_passes_a_still_face_unchanged(geometry):
    roi = np.array([100.0, 50.0, 280.0, 230.0])
    expression = np.linspace(-1, 1, 10).astype(np.float32)
    face = FaceFilter(SmoothingConfig(), geometry, face_transform(), expression, crop_scale(roi))
    for _ in range(10):
        transform, alpha_exp = face(face_transform(), expression, crop_scale(roi))
        np.testing.assert_allclose(transform, face_transform(), rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(alpha_exp, expression, rtol=1e-6)
    next_transform, _ = face.predicted()
    np.testing.assert_allclose(next_transform, face_transform(), rtol=1e-6, atol=1e-5)


def test_face_filter_follows_measured_motion(geometry):
    roi = np.array([100.0, 50.0, 280.0, 230.0])
    expression = np.zeros(10, np.float32)
    face = FaceFilter(SmoothingConfig(), geometry, face_transform(), expression, crop_scale(roi))
    rng = np.random.default_rng(5)
    for t in range(1, 40):
        noisy = face_transform(3.0 * t + rng.normal(0, 0.6))
        transform, _ = face(noisy, expression, crop_scale(roi), (np.array([3.0, 0.0]), 0.9))
    assert abs(transform[0, 3] - face_transform(3.0 * 39)[0, 3]) < 0.4  # no lag


def test_bad_smoothing_settings_are_refused():
    with pytest.raises(ValueError, match="smoothing_measurement_noise"):
        SmoothingConfig(measurement_noise=0)
    with pytest.raises(ValueError, match="smoothing_gate"):
        SmoothingConfig(gate=-1)
