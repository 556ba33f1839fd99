"""tddfa.detector.Detector on the CPU: the frame -> K faces object against the step-by-step
path it replaces and against the original 3DDFA_V2 (../shared/reference)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tddfa.config import PipelineConfig
from tddfa.detection import select_faces
from tddfa.detector import Detector
from tddfa.preprocess import DETECTOR_MEAN_RGB, to_detector_canvas
from tddfa.priors import prior_boxes
from tddfa.runners import make_runner

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is the CPU resize")

CFG = PipelineConfig()


@pytest.fixture(scope="module")
def runner(onnx_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("face_detector")
    os.symlink(onnx_models["face_detector"], folder / "model.onnx")
    return make_runner(folder, "cpu")


@pytest.fixture(scope="module")
def detector(runner):
    return Detector(CFG, runner)


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def frames(asset_dir) -> dict[str, np.ndarray]:
    """The test photos and two frames of each sample video."""
    import av

    out = {p.name: _load_rgb(p) for p in sorted((asset_dir / "images").glob("*.jpg"))}
    for video in ("emma720.mp4", "two_faces_360p.mp4"):
        with av.open(str(asset_dir / "video" / video)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in (0, 45):
                    out[f"{video}#{i}"] = frame.to_ndarray(format="rgb24")
                if i >= 45:
                    break
    return out


def _step_by_step(runner, image: np.ndarray, cfg: PipelineConfig = CFG):
    """The path the Detector replaces: numpy canvas, network, per-frame selection."""
    canvas, scale = to_detector_canvas(image, cfg)
    out = runner.run({"DETECTOR_INPUT": canvas[None]})
    priors = prior_boxes(cfg.canvas_height, cfg.canvas_width)
    return select_faces(out["LOC"][0], out["CONF"][0], priors, scale, cfg)


@pytest.mark.parametrize("shape", [(1901, 3913), (720, 1280), (300, 500), (1000, 700), (20, 16)])
def test_cpu_canvas_is_opencvs_resize_padded_with_the_mean(detector, shape):
    rng = np.random.default_rng(sum(shape))
    images = rng.integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    canvases, scale = detector.preprocess(images)
    assert canvases.shape == (2, 3, CFG.canvas_height, CFG.canvas_width)
    assert canvases.dtype == np.float32
    for image, canvas in zip(images, canvases, strict=True):
        want, want_scale = to_detector_canvas(image, CFG)  # the numpy resize of before
        assert scale == want_scale
        np.testing.assert_array_equal(canvas, want)
        height, width = int(shape[0] * scale), int(shape[1] * scale)
        if (height, width) != shape:  # the original: cv2.resize(img, (int(w*s), int(h*s)))
            resized = cv2.resize(image, (width, height))
            np.testing.assert_array_equal(canvas[:, :height, :width], resized.transpose(2, 0, 1))
        assert (canvas[:, height:] == np.asarray(DETECTOR_MEAN_RGB)[:, None, None]).all()


def test_emma_matches_the_original(detector, asset_dir, reference_dir):
    reference = json.loads((reference_dir / "emma.json").read_text())
    image = _load_rgb(asset_dir / reference["image"])
    boxes, counts = detector(image[None])
    assert boxes.shape == (1, CFG.max_faces, 5) and boxes.dtype == np.float32
    assert counts.shape == (1,) and counts.dtype == np.int32
    expected = np.array([f["box"] + [f["score"]] for f in reference["faces"]], np.float32)
    assert counts[0] == len(expected) == 3
    assert np.abs(boxes[0, :3, :4] - expected[:, :4]).max() <= 1.0
    assert np.abs(boxes[0, :3, 4] - expected[:, 4]).max() <= 1e-3
    assert not boxes[0, 3:].any()


def test_same_faces_as_the_step_by_step_path(detector, runner, frames):
    for name, image in frames.items():
        boxes, counts = detector(image[None])
        want, count = _step_by_step(runner, image)
        assert counts[0] == count, name
        np.testing.assert_array_equal(boxes[0], want, err_msg=name)
    assert sum(int(detector(f[None])[1][0]) for f in frames.values()) >= len(frames)


def test_a_batch_equals_its_frames(detector, frames):
    image = frames["emma720.mp4#0"]
    batch = np.stack([image, np.zeros_like(image), image[:, ::-1]])
    boxes, counts = detector(batch)
    assert counts[1] == 0 and not boxes[1].any()
    for b in (0, 2):
        one, count = detector(batch[b : b + 1])
        assert counts[b] == count[0] >= 1
        np.testing.assert_array_equal(boxes[b], one[0])


def test_more_faces_than_slots_keep_the_best(runner, frames):
    image = frames["emma.jpg"]
    full, _ = Detector(CFG, runner)(image[None])
    boxes, counts = Detector(PipelineConfig(max_faces=2), runner)(image[None])
    assert counts.tolist() == [2] and boxes.shape == (1, 2, 5)
    np.testing.assert_array_equal(boxes[0], full[0, :2])


@pytest.mark.parametrize(
    ("images", "fragment"),
    [
        (np.zeros((480, 640, 3), np.uint8), "(1, H, W, 3)"),
        (np.zeros((0, 480, 640, 3), np.uint8), "no frame"),
        (np.zeros((1, 480, 640, 3), np.float32), "uint8"),
        (np.zeros((1, 480, 640, 4), np.uint8), "alpha"),
        (np.zeros((1, 8, 8, 3), np.uint8), "min_image_size"),
        ([[0]], "batch axis"),
    ],
    ids=["no-batch", "empty-batch", "float", "rgba", "tiny", "list"],
)
def test_bad_frames_are_refused_with_the_fix(detector, images, fragment):
    with pytest.raises(ValueError) as err:
        detector.validate(images)
    assert fragment in str(err.value)
