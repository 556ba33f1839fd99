"""The whole-detector ONNX graph (tools/build/detector_graph.py) in onnxruntime against the Python
tddfa.detector.Detector: frames in, the K best faces out."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tddfa.config import PipelineConfig
from tddfa.detection import select_faces
from tddfa.detector import Detector
from tddfa.preprocess import detector_scale, resized_size
from tddfa.priors import prior_boxes
from tddfa.runners import make_runner
from tddfa_tools.build.detector_graph import (
    DETECTIONS,
    FACE_BOXES,
    FACE_COUNT,
    NETWORK_INPUT,
    NUM_FACES,
    build_rescale_graph,
    build_selection_graph,
)

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("cv2", reason="opencv-python-headless is the CPU resize")

CFG = PipelineConfig()


def _session(model_or_path):
    source = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


# ---- step 1: the rescale rule inside the graph ------------------------------------------


def test_rescale_rule_in_the_graph_is_pythons():
    session = _session(build_rescale_graph(CFG))
    rng = np.random.default_rng(0)
    sizes = [(1901, 3913), (720, 1280), (2596, 2234), (1080, 1920), (2160, 3840), (16, 16),
             (4096, 4096), (719, 1081), (721, 100), (1951, 3911)]  # fmt: skip
    sizes += [tuple(int(v) for v in rng.integers(16, 3000, 2)) for _ in range(150)]
    for height, width in sizes:
        out_size, scale = session.run(None, {"IMAGE": np.zeros((1, height, width, 3), np.uint8)})
        want = detector_scale(height, width, CFG)
        assert tuple(out_size.tolist()) == resized_size(height, width, want), (height, width)
        assert scale == np.float32(want), (height, width)


def test_rescale_rule_follows_the_config():
    cfg = PipelineConfig(canvas_height=360, canvas_width=480)
    session = _session(build_rescale_graph(cfg))
    out_size, scale = session.run(None, {"IMAGE": np.zeros((2, 720, 1280, 3), np.uint8)})
    assert tuple(out_size.tolist()) == resized_size(720, 1280, detector_scale(720, 1280, cfg))
    assert out_size[1] == 480 and scale == np.float32(detector_scale(720, 1280, cfg))


# ---- steps 5-7: decode, NMS, top K -------------------------------------------------------


def _detections(rng, batch, canvas):
    """Clusters of overlapping high-score priors, random offsets, one frame empty."""
    priors = prior_boxes(canvas, canvas)
    loc = rng.normal(0, 0.3, (batch, len(priors), 4)).astype(np.float32)
    score = rng.uniform(0, 0.3, (batch, len(priors))).astype(np.float32)
    for b in range(batch - 1):
        for _ in range(6):
            near = np.abs(priors[:, :2] - rng.uniform(0, 1, 2)).max(axis=1) < 0.08
            score[b, near] = rng.uniform(0.4, 1.0, near.sum())
    conf = np.stack([1 - score, score], axis=-1).astype(np.float32)
    return loc, conf, priors


@pytest.mark.parametrize("cfg", [PipelineConfig(canvas_height=256, canvas_width=256),
                                 PipelineConfig(canvas_height=256, canvas_width=256, max_faces=3,
                                                nms_iou_threshold=0.5)],
                         ids=["default", "k3-iou0.5"])  # fmt: skip
def test_selection_in_the_graph_equals_select_faces(cfg):
    rng = np.random.default_rng(cfg.max_faces)
    loc, conf, priors = _detections(rng, 4, 256)
    session = _session(build_selection_graph(cfg))
    boxes, counts, copies, count_copies = session.run(
        None, {"LOC": loc, "CONF": conf, "SCALE": np.array(0.37, np.float32)}
    )
    assert boxes.shape == (4, cfg.max_faces, 5) and counts.shape == (4, 1)
    assert counts.dtype == np.int32 and counts[-1, 0] == 0
    np.testing.assert_array_equal(copies, boxes)
    np.testing.assert_array_equal(count_copies, counts)
    for b in range(4):
        want, count = select_faces(loc[b], conf[b], priors, 0.37, cfg)
        assert counts[b, 0] == count
        np.testing.assert_allclose(boxes[b, :, :4], want[:, :4], rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(boxes[b, :, 4], want[:, 4])
    assert counts[:3].min() >= 2


def test_nms_suppresses_at_the_iou_threshold_with_the_plus_one_convention():
    """docs/models.md 1: boxes of 13 x 10 inclusive pixels overlapping by 6 columns have
    IoU_{+1} = 0.3 exactly and must be suppressed; one column further apart they are not."""
    from onnx import TensorProto, helper

    cfg = PipelineConfig(canvas_height=32, canvas_width=32)
    model = build_selection_graph(cfg)
    nms = next(n for n in model.graph.node if n.op_type == "NonMaxSuppression")
    # a graph of the same NMS node (same constants) fed with boxes directly
    graph = helper.make_graph(
        [helper.make_node("Add", ["B", nms_shift(model)], ["SHIFTED"]),
         helper.make_node("NonMaxSuppression", ["SHIFTED", "S", *nms.input[2:]], ["SEL"],
                          center_point_box=0)],
        "nms",
        [helper.make_tensor_value_info("B", TensorProto.FLOAT, [1, 2, 4]),
         helper.make_tensor_value_info("S", TensorProto.FLOAT, [1, 1, 2])],
        [helper.make_tensor_value_info("SEL", TensorProto.INT64, [None, 3])],
        initializer=[i for i in model.graph.initializer
                     if i.name in (*nms.input[2:], nms_shift(model))],
    )  # fmt: skip
    session = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    scores = np.array([[[0.9, 0.8]]], np.float32)
    touching = np.array([[[0, 0, 12, 9], [7, 0, 19, 9]]], np.float32)
    assert session.run(None, {"B": touching, "S": scores})[0][:, 2].tolist() == [0]
    apart = touching + np.array([0, 0, 0, 0, 1, 0, 1, 0], np.float32).reshape(1, 2, 4)
    assert session.run(None, {"B": apart, "S": scores})[0][:, 2].tolist() == [0, 1]
    at_threshold = np.array([[[0.9, 0.5]]], np.float32)  # score 0.5 is not > 0.5
    assert session.run(None, {"B": apart, "S": at_threshold})[0][:, 2].tolist() == [0]


def nms_shift(model) -> str:
    """Name of the (4,) constant that shifts x2, y2 by one pixel before the NMS."""
    return next(i.name for i in model.graph.initializer if "plus_one" in i.name)


# ---- the whole graph against the Python Detector -----------------------------------------


@pytest.fixture(scope="module")
def graph_path(asset_dir, tmp_path_factory):
    from tddfa_tools.build.export_onnx import export_detector_graph

    out = tmp_path_factory.mktemp("detector_graph") / "face_detector.onnx"
    return export_detector_graph(asset_dir / "3ddfa_v2" / "FaceBoxesProd.pth", out, CFG)


@pytest.fixture(scope="module")
def graph(graph_path):
    """The graph with its canvas exposed as an extra output (to measure the resize)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(os.fspath(graph_path))
    model.graph.output.append(helper.make_tensor_value_info(NETWORK_INPUT, TensorProto.FLOAT, None))
    return _session(model)


@pytest.fixture(scope="module")
def detector(onnx_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("face_detector_network")
    os.symlink(onnx_models["face_detector"], folder / "model.onnx")
    return Detector(CFG, make_runner(folder, "cpu"))


@pytest.fixture(scope="module")
def frames(asset_dir) -> dict[str, np.ndarray]:
    import av
    from PIL import Image

    out = {
        p.name: np.asarray(Image.open(p).convert("RGB"))
        for p in sorted((asset_dir / "images").glob("*.jpg"))
    }
    for video in ("emma720.mp4", "two_faces_360p.mp4"):
        with av.open(str(asset_dir / "video" / video)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i % 40 == 0:
                    out[f"{video}#{i}"] = frame.to_ndarray(format="rgb24")
                if i >= 120:
                    break
    return out


def test_graph_io(graph_path):
    session = _session(os.fspath(graph_path))
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert inputs == {"IMAGE": ("tensor(uint8)", ["batch", "height", "width", 3])}
    outputs = {o.name: o.type for o in session.get_outputs()}
    assert outputs == {FACE_BOXES: "tensor(float)", FACE_COUNT: "tensor(int32)",
                       DETECTIONS: "tensor(float)", NUM_FACES: "tensor(int32)"}  # fmt: skip


def test_graph_equals_the_python_detector(graph, detector, frames):
    """Boxes within 1 px and scores within 1e-3 of the Detector (OpenCV resize, numpy
    selection) on the test photos and video frames; the in-graph canvas (float bilinear,
    rounded) within one grey level of OpenCV's fixed-point one."""
    worst = {"box": 0.0, "score": 0.0, "grey": 0.0, "grey_pixels": 0.0}
    faces = 0
    for name, image in frames.items():
        boxes, counts, copies, count_copies, canvas = graph.run(None, {"IMAGE": image[None]})
        want, want_counts = detector(image[None])
        assert counts[:, 0].tolist() == want_counts.tolist(), name
        np.testing.assert_array_equal(copies, boxes)
        np.testing.assert_array_equal(count_copies, counts)
        n = int(counts[0, 0])
        faces += n
        assert not boxes[0, n:].any()
        worst["box"] = max(
            worst["box"], float(np.abs(boxes[0, :n, :4] - want[0, :n, :4]).max(initial=0))
        )
        worst["score"] = max(
            worst["score"], float(np.abs(boxes[0, :n, 4] - want[0, :n, 4]).max(initial=0))
        )
        reference, _ = detector.preprocess(image[None])  # RGB canvas padded with the mean
        bgr = reference[:, ::-1] - np.asarray([104.0, 117.0, 123.0], np.float32)[:, None, None]
        grey = np.abs(canvas - bgr)
        worst["grey"] = max(worst["grey"], float(grey.max()))
        worst["grey_pixels"] = max(worst["grey_pixels"], float((grey > 0).mean()))
    print(f"graph vs Detector over {len(frames)} frames, {faces} faces: {worst}")
    assert faces >= len(frames)
    assert worst["box"] <= 1.0 and worst["score"] <= 1e-3
    assert worst["grey"] <= 1.0


def test_graph_batches_and_blank_frames(graph, frames):
    image = frames["emma720.mp4#0"]
    batch = np.stack([image, np.zeros_like(image), image])
    boxes, counts = graph.run(None, {"IMAGE": batch})[:2]
    assert counts[:, 0].tolist()[1] == 0 and not boxes[1].any()
    single, single_count = graph.run(None, {"IMAGE": image[None]})[:2]
    assert counts[0, 0] == counts[2, 0] == single_count[0, 0] >= 1
    np.testing.assert_allclose(boxes[0], single[0], atol=1e-3)
    np.testing.assert_array_equal(boxes[0], boxes[2])


@pytest.mark.parametrize("flavour", ["onnxruntime", "tensorrt"])
def test_native_configs_fit_the_exported_graphs(graph_path, onnx_models, flavour):
    """The configs `tddfa build` writes for the native flavours declare exactly what the real
    exported graphs have (Triton refuses a mismatch when it loads the model)."""
    from tddfa_tools.build.flavours import configure_networks, graph_io_problems, layout_for
    from tddfa_tools.build.model_config import load_repository
    from tddfa_tools.build.repository import TEMPLATE

    configs = load_repository(TEMPLATE)  # the default K and canvas, as CFG
    configure_networks(configs, layout_for(flavour, "models"), gpu=True, fp16=True)
    assert graph_io_problems(configs["face_detector"], graph_path) == []
    assert graph_io_problems(configs["face_regressor"], onnx_models["face_regressor"]) == []
    configs["face_detector"].output[0].dims[0] = 4  # K = 4: not what the graph was built for
    assert graph_io_problems(configs["face_detector"], graph_path) == [
        "FACE_BOXES has dims [-1, 8, 5] in face_detector.onnx, [-1, 4, 5] in the config"
    ]
