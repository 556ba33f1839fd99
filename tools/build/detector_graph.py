"""The face detector as ONE ONNX graph, for Triton's onnxruntime and tensorrt flavours.

    IMAGE (N, H, W, 3) uint8 RGB, any H x W
      -> FACE_BOXES (N, K, 5) float32 x1, y1, x2, y2, score in image pixels (zero rows past
         the count), FACE_COUNT (N, 1) int32, and the identical internal copies DETECTIONS,
         NUM_FACES for the later ensemble steps (Triton 2.51's ensemble pruning: README,
         Architecture).

Inside, in order (the Python :class:`tddfa.detector.Detector`, step by step):

1. the original's rescale rule on the frame size (docs/models.md 1), in float64 as Python
   computes it, so the resized size and the scale are bit-equal in onnxruntime. TensorRT has
   no float64: its parser casts these few scalar operations to float32 (a resized size can
   then differ by one pixel for rare frame sizes; the common video sizes are exact, see
   docs/detector.md);
2. bilinear ``Resize`` (``half_pixel``: OpenCV's sampling positions) in float32, rounded to
   integers: OpenCV's fixed-point uint8 resize differs from it by at most one grey level;
3. RGB -> BGR, minus the detector mean, zero padding to the fixed canvas (the Python
   canvas padded with the mean colour is the same tensor after the mean subtraction);
4. FaceBoxes (the bare network, on the static canvas);
5. prior decoding (priors are a constant of the canvas), boxes in image pixels;
6. ``NonMaxSuppression`` (the standard ONNX op: onnxruntime runs it, TensorRT >= 8.5 parses
   it into its native INMSLayer) with the +1-pixel IoU of docs/models.md 1 obtained by shifting
   x2, y2 by one pixel (IoU_{+1}(a, b) = IoU(a + (0, 0, 1, 1), b + (0, 0, 1, 1))), and the
   score threshold; its ``>`` comparison is made ``>=`` by passing the float32 just below
   the IoU threshold;
7. top K of the kept boxes by score (``TopK``, ties to the lower prior index), zero rows
   past the count.

Why NonMaxSuppression and not TensorRT's EfficientNMS plugin: the same graph must run in
onnxruntime (the onnxruntime flavour, CI's parity tests here), which has no EfficientNMS;
the ONNX op is parsed natively by TensorRT since 8.5, so one graph serves both flavours.
What the graph does not do: the original's cap of 5000 candidates before NMS (TopK cannot
take K = 5000 in TensorRT; a frame with more than 5000 priors above the 0.5 score is not a
real frame) -- TensorRT's NMS layer applies its own 5000-box limit anyway.
"""

from __future__ import annotations

import numpy as np

from tddfa.config import DETECTOR_MEAN_BGR, DETECTOR_VARIANCES, PipelineConfig
from tddfa.contract import IMAGE_INPUT
from tddfa.priors import prior_boxes

FACE_BOXES = "FACE_BOXES"
FACE_COUNT = "FACE_COUNT"
DETECTIONS = "DETECTIONS"  # internal copy of FACE_BOXES for the next step
NUM_FACES = "NUM_FACES"  # internal copy of FACE_COUNT
OUTPUTS = (FACE_BOXES, FACE_COUNT, DETECTIONS, NUM_FACES)
NETWORK_INPUT = "CANVAS_BGR"  # (N, 3, Hc, Wc) float32 BGR minus the mean: the bare FaceBoxes
NETWORK_OUTPUTS = ("LOC", "CONF")
_PREFIX = "det/"


class _Builder:
    """Collects nodes and initialisers with unique names under one prefix."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{_PREFIX}{hint}_{self._count}"

    def const(self, value, dtype, hint: str = "const") -> str:
        name = self._name(hint)
        self.initializers.append(
            self.numpy_helper.from_array(np.asarray(value, dtype=dtype), name=name)
        )
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs):
        names = (
            outputs
            if isinstance(outputs, list)
            else [self._name(op_type.lower()) for _ in range(outputs)]
        )
        self.nodes.append(
            self.helper.make_node(op_type, inputs, names, name=self._name(f"n_{op_type}"), **attrs)
        )
        return names[0] if len(names) == 1 else names


def _scale_and_size(g: _Builder, cfg: PipelineConfig, image: str):
    """The rescale rule (tddfa.preprocess.detector_scale / resized_size) on IMAGE's shape.

    Returns (batch, out_h, out_w) int64 scalars and the scale as a float32 scalar.
    """
    from onnx import TensorProto

    f64 = np.float64
    shape = g.op("Shape", [image])
    batch, height, width = (
        g.op("Gather", [shape, g.const(i, np.int64, "axis")], axis=0) for i in range(3)
    )
    h, w = (g.op("Cast", [d], to=TensorProto.DOUBLE) for d in (height, width))
    one = g.const(1.0, f64, "one")
    max_h, max_w = g.const(cfg.rescale_max_height, f64), g.const(cfg.rescale_max_width, f64)
    canvas_h, canvas_w = g.const(cfg.canvas_height, f64), g.const(cfg.canvas_width, f64)
    # scale = max_h / h if h > max_h
    s = g.op("Where", [g.op("Greater", [h, max_h]), g.op("Div", [max_h, h]), one])
    # scale *= max_w / (w * scale) if w * scale > max_w
    ws = g.op("Mul", [w, s])
    s = g.op("Where", [g.op("Greater", [ws, max_w]), g.op("Mul", [s, g.op("Div", [max_w, ws])]), s])
    # the canvas: int(h * scale) > canvas_h -> canvas_h / h, then the same for the width
    too_high = g.op("Greater", [g.op("Floor", [g.op("Mul", [h, s])]), canvas_h])
    s = g.op("Where", [too_high, g.op("Div", [canvas_h, h]), s])
    too_wide = g.op("Greater", [g.op("Floor", [g.op("Mul", [w, s])]), canvas_w])
    s = g.op("Where", [too_wide, g.op("Div", [canvas_w, w]), s])
    out_h, out_w = (
        g.op(
            "Cast", [g.op("Max", [g.op("Floor", [g.op("Mul", [d, s])]), one])], to=TensorProto.INT64
        )
        for d in (h, w)
    )
    return batch, out_h, out_w, g.op("Cast", [s], to=TensorProto.FLOAT)


def _canvas(g: _Builder, cfg: PipelineConfig, image: str, batch: str, out_h: str, out_w: str):
    """IMAGE -> (N, 3, Hc, Wc) float32 BGR minus the mean, the resized frame top-left."""
    from onnx import TensorProto

    i64 = np.int64
    x = g.op("Transpose", [g.op("Cast", [image], to=TensorProto.FLOAT)], perm=[0, 3, 1, 2])
    axis0 = g.const([0], i64, "axes")
    sizes = g.op(
        "Concat",
        [g.op("Unsqueeze", [batch, axis0]), g.const([3], i64), g.op("Unsqueeze", [out_h, axis0]),
         g.op("Unsqueeze", [out_w, axis0])],
        axis=0,
    )  # fmt: skip
    x = g.op(
        "Resize",
        [x, "", "", sizes],
        mode="linear",
        coordinate_transformation_mode="half_pixel",
    )
    x = g.op("Round", [x])  # OpenCV's resize of uint8 gives integers
    x = g.op("Gather", [x, g.const([2, 1, 0], i64, "bgr")], axis=1)
    mean = g.const(np.asarray(DETECTOR_MEAN_BGR, np.float32).reshape(1, 3, 1, 1), np.float32)
    x = g.op("Sub", [x, mean])
    pad_h = g.op("Sub", [g.const(cfg.canvas_height, i64), out_h])
    pad_w = g.op("Sub", [g.const(cfg.canvas_width, i64), out_w])
    pads = g.op(
        "Concat",
        [g.const([0, 0, 0, 0, 0, 0], i64), g.op("Unsqueeze", [pad_h, axis0]),
         g.op("Unsqueeze", [pad_w, axis0])],
        axis=0,
    )  # fmt: skip
    x = g.op("Pad", [x, pads, g.const(0.0, np.float32)], mode="constant")
    # a static canvas for the network (TensorRT then sees fixed spatial dims)
    shape = g.const([-1, 3, cfg.canvas_height, cfg.canvas_width], i64, "canvas_shape")
    return g.op("Reshape", [x, shape], outputs=[NETWORK_INPUT])


def _select(g: _Builder, cfg: PipelineConfig, loc: str, conf: str, scale: str) -> None:
    """LOC, CONF, scale -> the four outputs (decode, NMS, top K, zero rows)."""
    from onnx import TensorProto

    i64, f32 = np.int64, np.float32
    priors = prior_boxes(cfg.canvas_height, cfg.canvas_width)
    if cfg.max_faces > len(priors):
        raise ValueError(f"max_faces {cfg.max_faces} exceeds the canvas' {len(priors)} priors")
    centre_var, size_var = DETECTOR_VARIANCES
    axes2 = g.const([2], i64, "axes")
    p_xy, p_wh = g.const(priors[None, :, :2], f32, "prior_xy"), g.const(priors[None, :, 2:], f32)
    l_xy = g.op("Slice", [loc, g.const([0], i64), g.const([2], i64), axes2])
    l_wh = g.op("Slice", [loc, g.const([2], i64), g.const([4], i64), axes2])
    centre = g.op("Add", [p_xy, g.op("Mul", [g.op("Mul", [l_xy, g.const(centre_var, f32)]), p_wh])])
    size = g.op("Mul", [p_wh, g.op("Exp", [g.op("Mul", [l_wh, g.const(size_var, f32)])])])
    top_left = g.op("Sub", [centre, g.op("Div", [size, g.const(2.0, f32)])])
    corners = g.op("Concat", [top_left, g.op("Add", [top_left, size])], axis=2)
    w, h = cfg.canvas_width, cfg.canvas_height
    pixels = g.op("Mul", [corners, g.const([w, h, w, h], f32, "to_pixels")])
    boxes = g.op("Div", [pixels, scale])  # (N, P, 4) in image pixels
    scores = g.op("Gather", [conf, g.const(1, i64, "face")], axis=2)  # (N, P)

    # NMS with the +1-pixel IoU and ">=" at the threshold
    shifted = g.op("Add", [boxes, g.const([0, 0, 1, 1], f32, "plus_one")])
    iou = np.nextafter(np.float32(cfg.nms_iou_threshold), np.float32(0))
    threshold = max(cfg.pre_nms_threshold, cfg.score_threshold)
    keep_max = min(cfg.max_faces, cfg.post_nms_top_k)
    selected = g.op(
        "NonMaxSuppression",
        [
            shifted,
            g.op("Unsqueeze", [scores, g.const([1], i64)]),
            g.const([keep_max], i64),
            g.const([iou], f32, "iou"),
            g.const([threshold], f32, "score_threshold"),
        ],
        center_point_box=0,
    )  # (M, 3): frame, class, box
    frame_and_box = g.op("Gather", [selected, g.const([0, 2], i64)], axis=1)
    zeros = g.op(
        "ConstantOfShape",
        [g.op("Shape", [scores])],
        value=g.helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
    )
    ones = g.op(
        "ConstantOfShape",
        [g.op("Slice", [g.op("Shape", [selected]), g.const([0], i64), g.const([1], i64)])],
        value=g.helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
    )
    kept = g.op("ScatterND", [zeros, frame_and_box, ones])
    ranked = g.op("Where", [g.op("Greater", [kept, g.const(0.5, f32)]), scores, g.const(-1.0, f32)])
    values, index = g.op(
        "TopK", [ranked, g.const([cfg.max_faces], i64, "k")], outputs=2, axis=1, largest=1, sorted=1
    )
    valid = g.op("Greater", [values, g.const(0.0, f32)])  # (N, K)
    top_boxes = g.op("GatherND", [boxes, g.op("Unsqueeze", [index, axes2])], batch_dims=1)
    faces = g.op("Concat", [top_boxes, g.op("Unsqueeze", [values, axes2])], axis=2)
    faces = g.op("Where", [g.op("Unsqueeze", [valid, axes2]), faces, g.const(0.0, f32)])
    count = g.op(
        "ReduceSum",
        [g.op("Cast", [valid], to=TensorProto.FLOAT), g.const([1], i64)],
        keepdims=1,
    )
    count = g.op("Cast", [count], to=TensorProto.INT32)
    for name, source in ((FACE_BOXES, faces), (DETECTIONS, faces)):
        g.op("Identity", [source], outputs=[name])
    for name in (FACE_COUNT, NUM_FACES):
        g.op("Identity", [count], outputs=[name])


def build_detector_graph(network, cfg: PipelineConfig):
    """Wrap the bare FaceBoxes ONNX model into the whole detector (module docstring).

    Args:
        network: ``onnx.ModelProto`` of :class:`tddfa.networks.faceboxes.FaceBoxes` with input
            ``CANVAS_BGR`` (N, 3, Hc, Wc) and outputs ``LOC``, ``CONF``, for ``cfg``'s canvas.
        cfg: canvas, rescale rule, thresholds and K (all baked into the graph).

    Returns:
        The ``onnx.ModelProto`` (checked by ``onnx.checker``), same opset as ``network``.
    """
    import onnx
    from onnx import TensorProto, helper

    inputs = [i.name for i in network.graph.input]
    outputs = [o.name for o in network.graph.output]
    if inputs != [NETWORK_INPUT] or outputs != list(NETWORK_OUTPUTS):
        raise ValueError(
            f"the network must map {NETWORK_INPUT} to {NETWORK_OUTPUTS}, got {inputs} -> "
            f"{outputs}: export tddfa.networks.faceboxes.FaceBoxes with these names"
        )
    g = _Builder()
    batch, out_h, out_w, scale = _scale_and_size(g, cfg, IMAGE_INPUT)
    _canvas(g, cfg, IMAGE_INPUT, batch, out_h, out_w)
    net = network.graph
    _select(g, cfg, *NETWORK_OUTPUTS, scale)
    k = cfg.max_faces
    graph = helper.make_graph(
        [*g.nodes[: _canvas_end(g)], *net.node, *g.nodes[_canvas_end(g) :]],
        "face_detector",
        [helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8, ["batch", "height", "width", 3])],
        [
            helper.make_tensor_value_info(FACE_BOXES, TensorProto.FLOAT, ["batch", k, 5]),
            helper.make_tensor_value_info(FACE_COUNT, TensorProto.INT32, ["batch", 1]),
            helper.make_tensor_value_info(DETECTIONS, TensorProto.FLOAT, ["batch", k, 5]),
            helper.make_tensor_value_info(NUM_FACES, TensorProto.INT32, ["batch", 1]),
        ],
        initializer=[*g.initializers, *net.initializer],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=list(network.opset_import), producer_name="tddfa-triton"
    )
    model.ir_version = network.ir_version
    helper.set_model_props(
        model,
        {
            "tddfa.graph": "face_detector: IMAGE -> FACE_BOXES, FACE_COUNT (+ DETECTIONS, NUM_FACES)",
            "tddfa.config": repr(cfg),
        },
    )
    onnx.checker.check_model(model)
    return model


def build_selection_graph(cfg: PipelineConfig, opset: int = 17):
    """Steps 5-7 alone: LOC (N, P, 4), CONF (N, P, 2), SCALE () float32 -> the four outputs.

    The part of :func:`build_detector_graph` after the network, as a model of its own (tests
    compare it with :func:`tddfa.detection.select_faces` on chosen detector outputs).
    """
    import onnx
    from onnx import TensorProto, helper

    g = _Builder()
    _select(g, cfg, *NETWORK_OUTPUTS, "SCALE")
    priors = len(prior_boxes(cfg.canvas_height, cfg.canvas_width))
    k = cfg.max_faces
    graph = helper.make_graph(
        g.nodes,
        "face_selection",
        [
            helper.make_tensor_value_info("LOC", TensorProto.FLOAT, ["batch", priors, 4]),
            helper.make_tensor_value_info("CONF", TensorProto.FLOAT, ["batch", priors, 2]),
            helper.make_tensor_value_info("SCALE", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info(FACE_BOXES, TensorProto.FLOAT, ["batch", k, 5]),
            helper.make_tensor_value_info(FACE_COUNT, TensorProto.INT32, ["batch", 1]),
            helper.make_tensor_value_info(DETECTIONS, TensorProto.FLOAT, ["batch", k, 5]),
            helper.make_tensor_value_info(NUM_FACES, TensorProto.INT32, ["batch", 1]),
        ],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def build_rescale_graph(cfg: PipelineConfig, opset: int = 17, double: bool = True):
    """Step 1 alone: IMAGE -> OUT_SIZE (2,) int64 (rows, cols), SCALE () float32.

    ``double=False`` builds it in float32, as TensorRT's parser runs the float64 version
    (for measuring where the two disagree).
    """
    import onnx
    from onnx import TensorProto, helper

    g = _Builder()
    _, out_h, out_w, scale = _scale_and_size(g, cfg, IMAGE_INPUT)
    axis0 = g.const([0], np.int64)
    g.op(
        "Concat",
        [g.op("Unsqueeze", [out_h, axis0]), g.op("Unsqueeze", [out_w, axis0])],
        outputs=["OUT_SIZE"],
        axis=0,
    )
    g.op("Identity", [scale], outputs=["SCALE"])
    if not double:
        for node in g.nodes:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.DOUBLE:
                    attr.i = TensorProto.FLOAT
        for i, init in enumerate(g.initializers):
            if init.data_type == TensorProto.DOUBLE:
                array = g.numpy_helper.to_array(init).astype(np.float32)
                g.initializers[i] = g.numpy_helper.from_array(array, name=init.name)
    graph = helper.make_graph(
        g.nodes,
        "rescale_rule",
        [helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8, ["batch", "h", "w", 3])],
        [
            helper.make_tensor_value_info("OUT_SIZE", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("SCALE", TensorProto.FLOAT, []),
        ],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _canvas_end(g: _Builder) -> int:
    """Index of the node after the one that writes the network input (nodes are in order)."""
    for i, node in enumerate(g.nodes):
        if NETWORK_INPUT in node.output:
            return i + 1
    raise AssertionError("the canvas node is missing")
