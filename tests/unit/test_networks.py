"""Our FaceBoxes / MobileNetV1 definitions: strict loading and ONNX export parity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is needed for the network definitions")
cv2 = pytest.importorskip("cv2", reason="opencv is needed to read the test images")

from tddfa.config import DETECTOR_MIN_SIZES, DETECTOR_STEPS, PipelineConfig  # noqa: E402
from tddfa.networks.faceboxes import FaceDetectorGraph, load_faceboxes  # noqa: E402
from tddfa.networks.mobilenet_v1 import (  # noqa: E402
    FaceRegressorGraph,
    MobileNetV1,
    load_mobilenet,
)
from tddfa.preprocess import detector_scale  # noqa: E402
from tddfa_tools.build.export_onnx import PARITY_RTOL, check_parity, relative_error  # noqa: E402

IMAGES = ("emma.jpg", "trump_hillary.jpg", "JianzhuGuo.jpg")


@pytest.fixture(scope="module")
def detector(asset_dir: Path) -> FaceDetectorGraph:
    return FaceDetectorGraph(load_faceboxes(asset_dir / "3ddfa_v2" / "FaceBoxesProd.pth")).eval()


@pytest.fixture(scope="module")
def regressor(asset_dir: Path) -> FaceRegressorGraph:
    return FaceRegressorGraph(load_mobilenet(asset_dir / "3ddfa_v2" / "mb05_120x120.pth")).eval()


def _num_priors(height: int, width: int) -> int:
    """Priors of an H x W input: ceil(H/s) * ceil(W/s) cells times anchors per cell."""
    anchors = [sum(16 if m == 32 else 4 if m == 64 else 1 for m in ms) for ms in DETECTOR_MIN_SIZES]
    return sum(
        math.ceil(height / s) * math.ceil(width / s) * a
        for s, a in zip(DETECTOR_STEPS, anchors, strict=True)
    )


def _detector_input(path: Path) -> np.ndarray:
    """(1, 3, h, w) float32 RGB 0..255: the image rescaled by the original rule (cv2)."""
    bgr = cv2.imread(str(path))
    height, width = bgr.shape[:2]
    scale = detector_scale(height, width, PipelineConfig())
    if scale != 1.0:
        bgr = cv2.resize(bgr, (int(width * scale), int(height * scale)))
    return np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32)


def _crops(path: Path) -> np.ndarray:
    """(2, 3, 120, 120) float32 RGB 0..255: the whole image and its centre, resized."""
    rgb = cv2.imread(str(path))[:, :, ::-1]
    h, w = rgb.shape[:2]
    centre = rgb[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    crops = [cv2.resize(np.ascontiguousarray(c), (120, 120)) for c in (rgb, centre)]
    return np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32)


def test_faceboxes_loads_strictly(asset_dir: Path):
    state = torch.load(
        asset_dir / "3ddfa_v2" / "FaceBoxesProd.pth", weights_only=True, map_location="cpu"
    )
    net = load_faceboxes(asset_dir / "3ddfa_v2" / "FaceBoxesProd.pth")
    assert set(net.state_dict()) == set(state)
    assert not net.training


def test_mobilenet_loads_strictly(asset_dir: Path):
    checkpoint = torch.load(
        asset_dir / "3ddfa_v2" / "mb05_120x120.pth", weights_only=True, map_location="cpu"
    )
    net = load_mobilenet(asset_dir / "3ddfa_v2" / "mb05_120x120.pth")
    assert net.widen == 0.5
    assert {"module." + k for k in net.state_dict()} == set(checkpoint["state_dict"])


def test_mb1_loads_when_present(asset_dir: Path):
    path = asset_dir / "3ddfa_v2" / "mb1_120x120.pth"
    if not path.is_file():
        pytest.skip(f"{path.name} is not in {asset_dir} (optional upstream file)")
    assert load_mobilenet(path).widen == 1.0


@pytest.mark.parametrize("widen", [0.25, 1.0])
@pytest.mark.parametrize("layout", ["fc_param+fc_lm", "fc"])
def test_mobilenet_any_widen_and_layout(tmp_path: Path, widen: float, layout: str):
    """Checkpoints as upstream writes them: ``module.`` prefix, ``fc_param``/``fc_lm`` or ``fc``."""
    net = MobileNetV1(widen, landmark_head=layout != "fc").eval()
    state = {
        "module." + k.replace("fc_param.", "fc." if layout == "fc" else "fc_param."): v
        for k, v in net.state_dict().items()
    }
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "mb.pth")
    loaded = load_mobilenet(tmp_path / "mb.pth")
    assert loaded.widen == widen
    x = torch.rand(2, 3, 120, 120)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


def test_wrong_checkpoint_is_refused(asset_dir: Path):
    with pytest.raises(ValueError, match="not a 3DDFA MobileNetV1 checkpoint"):
        load_mobilenet(asset_dir / "3ddfa_v2" / "FaceBoxesProd.pth")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_faceboxes(asset_dir / "3ddfa_v2" / "mb05_120x120.pth")


def test_onnx_io_contract(onnx_models: dict[str, Path]):
    import onnx

    def io(path):
        model = onnx.load(str(path))
        dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
        assert model.opset_import[0].version == 17
        return {v.name: dims(v) for v in (*model.graph.input, *model.graph.output)}

    assert io(onnx_models["face_detector"]) == {
        "DETECTOR_INPUT": ["batch", 3, "height", "width"],
        "LOC": ["batch", "priors", 4],
        "CONF": ["batch", "priors", 2],
    }
    assert io(onnx_models["face_regressor"]) == {
        "CROPS": ["batch", "faces", 3, 120, 120],
        "PARAMS_NORM": ["batch", "faces", 62],
    }


@pytest.mark.parametrize("shape", [(1, 3, 720, 1280), (2, 3, 524, 1080), (1, 3, 97, 131)])
def test_detector_onnx_parity_random(detector, onnx_models, shape):
    x = np.random.default_rng(1).uniform(0, 255, size=shape).astype(np.float32)
    errors = check_parity(detector, onnx_models["face_detector"], "DETECTOR_INPUT", x)
    assert max(errors) <= PARITY_RTOL
    with torch.no_grad():
        loc, conf = detector(torch.from_numpy(x))
    assert loc.shape == (shape[0], _num_priors(*shape[2:]), 4)
    torch.testing.assert_close(conf.sum(-1), torch.ones(conf.shape[:2]))


@pytest.mark.parametrize("batch,faces", [(1, 1), (1, 8), (3, 8)])
def test_regressor_onnx_parity_random(regressor, onnx_models, batch, faces):
    x = np.random.default_rng(2).uniform(0, 255, size=(batch, faces, 3, 120, 120))
    errors = check_parity(regressor, onnx_models["face_regressor"], "CROPS", x.astype(np.float32))
    assert max(errors) <= PARITY_RTOL


@pytest.mark.parametrize("image", IMAGES)
def test_detector_onnx_parity_real_images(detector, onnx_models, asset_dir, image):
    x = _detector_input(asset_dir / "images" / image)
    assert max(check_parity(detector, onnx_models["face_detector"], "DETECTOR_INPUT", x)) <= 1e-5


def test_regressor_onnx_parity_real_images(regressor, onnx_models, asset_dir):
    x = np.stack([_crops(asset_dir / "images" / name) for name in IMAGES])  # (3, 2, 3, 120, 120)
    assert max(check_parity(regressor, onnx_models["face_regressor"], "CROPS", x)) <= 1e-5


def test_regressor_graph_matches_plain_network(regressor, asset_dir):
    """The graph's flip + normalisation equals feeding the bare network BGR (x - 127.5) / 128."""
    crops = _crops(asset_dir / "images" / "emma.jpg")
    with torch.no_grad():
        graph = regressor(torch.from_numpy(crops)[None])[0]
        plain = regressor.net(torch.from_numpy((crops[:, ::-1] - 127.5) / 128).contiguous())
    assert relative_error(graph.numpy(), plain.numpy()) <= 1e-6


def test_batchnorm_fusion_keeps_outputs_and_makes_fp16_usable(detector, regressor, asset_dir):
    """The PyTorch CUDA runner folds BatchNorm before casting to float16; unfused, FaceBoxes in
    float16 is far off (LOC relative error 0.49), fused it is within 2e-3."""
    import copy

    from tddfa.runners import fuse_conv_bn

    # a 256 x 512 part of emma (with a face): float16 convolutions are slow on the CPU
    x = torch.from_numpy(_detector_input(asset_dir / "images" / "emma.jpg")[..., :256, 256:768])
    with torch.no_grad():
        loc, conf = detector(x)
        fused = fuse_conv_bn(copy.deepcopy(detector))
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        loc32, conf32 = fused(x)
        loc16, conf16 = fused.half()(x.half())
        crops = torch.from_numpy(_crops(asset_dir / "images" / "emma.jpg"))[None]
        params = regressor(crops)
        params_fused = fuse_conv_bn(copy.deepcopy(regressor))(crops)
    assert relative_error(loc32.numpy(), loc.numpy()) <= 1e-5
    assert relative_error(conf32.numpy(), conf.numpy()) <= 1e-5
    assert relative_error(params_fused.numpy(), params.numpy()) <= 1e-5
    assert relative_error(loc16.float().numpy(), loc.numpy()) <= 2e-3
    assert np.abs(conf16.float().numpy() - conf.numpy()).max() <= 2e-3
