"""TensorRT engine builder: profiles and trtexec line always; real engines where TensorRT imports."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

# tests/ is on sys.path (the rootdir conftest's folder): the shared stand-in of tensorrt
from tensorrt_stand_in import FakeInput, FakeNetwork, FakeTensorRT

from tddfa.config import NUM_PARAMS, REGRESSOR_SIZE, PipelineConfig
from tddfa_tools.build import tensorrt_builder
from tddfa_tools.build.tensorrt_builder import (
    _check_profiles,
    build_engine,
    default_profiles,
    gpu_tag,
    trtexec_command,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT builder not installed")


@pytest.mark.parametrize(
    "cfg", [PipelineConfig(), PipelineConfig(max_faces=3, canvas_height=480, canvas_width=640)]
)
@pytest.mark.parametrize("max_batch", [1, 8])
def test_default_profiles_follow_config(cfg: PipelineConfig, max_batch: int) -> None:
    k, h, w = cfg.max_faces, cfg.canvas_height, cfg.canvas_width
    profiles = default_profiles(cfg, max_batch)
    assert set(profiles) == {"face_detector", "face_regressor"}
    # the whole detector graph: uint8 frames of any accepted size, optimised for the canvas
    lo, opt, hi = profiles["face_detector"]["IMAGE"]
    assert lo == (1, cfg.min_image_size, cfg.min_image_size, 3) and opt == (1, h, w, 3)
    assert hi == (max_batch, cfg.max_image_height, cfg.max_image_width, 3)
    # the bare network (python flavour): the canvas only
    network = default_profiles(cfg, max_batch, detector="network")["face_detector"]
    assert network == {"DETECTOR_INPUT": ((1, 3, h, w), (1, 3, h, w), (max_batch, 3, h, w))}
    crop = (3, REGRESSOR_SIZE, REGRESSOR_SIZE)
    assert profiles["face_regressor"]["CROPS"] == (
        (1, 1, *crop),
        (1, k, *crop),
        (max_batch, k, *crop),
    )
    for model in profiles.values():
        for lo, opt, hi in model.values():
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True))


def test_default_profiles_reject_bad_batch() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        default_profiles(PipelineConfig(), 0)
    with pytest.raises(ValueError, match="detector must be one of"):
        default_profiles(PipelineConfig(), 1, detector="canvas")


def test_detector_graph_profile_fits_the_graph(tmp_path: Path) -> None:
    """The IMAGE profile matches the exported graph's input (rank, fixed channel axis)."""
    pytest.importorskip("onnx")
    import onnx

    from tddfa_tools.build.detector_graph import build_rescale_graph

    path = tmp_path / "rescale.onnx"
    onnx.save(build_rescale_graph(PipelineConfig()), str(path))
    graph = onnx.load(str(path)).graph
    dims = tuple(d.dim_value or -1 for d in graph.input[0].type.tensor_type.shape.dim)
    network = FakeNetwork([FakeInput("IMAGE", dims)])
    _check_profiles(network, default_profiles(PipelineConfig(), 8)["face_detector"])


def test_trtexec_command_matches_profiles() -> None:
    cfg = PipelineConfig()
    profile = default_profiles(cfg, 8)["face_regressor"]
    line = trtexec_command("m.onnx", "m.plan", profiles=profile, timing_cache=Path("t.cache"))
    args = shlex.split(line)
    assert args[0] == "trtexec" and "--onnx=m.onnx" in args and "--saveEngine=m.plan" in args
    k, s = cfg.max_faces, REGRESSOR_SIZE
    assert f"--minShapes=CROPS:1x1x3x{s}x{s}" in args
    assert f"--optShapes=CROPS:1x{k}x3x{s}x{s}" in args
    assert f"--maxShapes=CROPS:8x{k}x3x{s}x{s}" in args
    assert "--fp16" in args and "--timingCacheFile=t.cache" in args
    assert "--fp16" not in shlex.split(
        trtexec_command("m.onnx", "m.plan", profiles=profile, fp16=False)
    )


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("Tesla T4", "T4"),
        ("", "gpu"),
    ],
)
def test_gpu_tag(name: str, tag: str) -> None:
    assert gpu_tag(name) == tag


def test_profile_check_names_each_problem() -> None:
    network = FakeNetwork([FakeInput("CROPS", (-1, -1, 3, 120, 120))])
    good = default_profiles(PipelineConfig(), 4)["face_regressor"]
    _check_profiles(network, good)
    bad = {
        "CROPS": ((2, 1, 3, 64, 64), (1, 8, 3, 64, 64), (4, 8, 3, 64, 64)),
        "X": ((1,), (1,), (1,)),
    }
    with pytest.raises(ValueError) as error:
        _check_profiles(network, bad)
    message = str(error.value)
    assert "CROPS axis 3 is fixed at 120" in message and "X, not an input" in message
    assert "CROPS axis 0: need 1 <= min <= opt <= max" in message


def test_missing_tensorrt_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when not installed
    with pytest.raises(ImportError, match="TensorRT builder not installed"):
        build_engine(tmp_path / "m.onnx", tmp_path, profiles={})


# ---- real engines (only where TensorRT and a CUDA GPU are available) ----

TINY = PipelineConfig(
    max_faces=2, canvas_height=128, canvas_width=192, max_image_height=256, max_image_width=384
)
TINY_BATCH = 2


@pytest.fixture(scope="module")
def tiny_onnx(
    onnx_models: dict[str, Path], asset_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    from tddfa_tools.build.export_onnx import export_detector_graph

    out = tmp_path_factory.mktemp("trt_onnx")
    graph = export_detector_graph(
        asset_dir / "3ddfa_v2" / "FaceBoxesProd.pth", out / "face_detector_graph.onnx", TINY
    )
    return {**onnx_models, "face_detector_graph": graph}


def _tiny_profiles(model: str) -> dict:
    """Profiles of the test engines: the bare detector network, or the whole graph."""
    if model == "face_detector_graph":
        return default_profiles(TINY, TINY_BATCH)["face_detector"]
    return default_profiles(TINY, TINY_BATCH, detector="network")[model]


@pytest.fixture(scope="module")
def engines(
    tiny_onnx: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need a CUDA GPU")
    out = tmp_path_factory.mktemp("engines")
    return {
        name: build_engine(
            path, out, profiles=_tiny_profiles(name), fp16=False, timing_cache=out / "timing.cache"
        )
        for name, path in tiny_onnx.items()
    }


def _run_engine(engine_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    buffers = {}
    for name, array in inputs.items():
        buffers[name] = torch.from_numpy(array).cuda().contiguous()
        context.set_input_shape(name, array.shape)
        context.set_tensor_address(name, buffers[name].data_ptr())
    outputs = {}
    dtypes = {trt.float32: torch.float32, trt.int32: torch.int32}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            outputs[name] = torch.empty(
                tuple(context.get_tensor_shape(name)),
                dtype=dtypes[engine.get_tensor_dtype(name)],
                device="cuda",
            )
            context.set_tensor_address(name, outputs[name].data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return {name: t.cpu().numpy() for name, t in outputs.items()}


def _inputs(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.uniform(0, 255, s).astype(np.float32) for n, s in shapes.items()}


@needs_tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("which", [0, 1, 2], ids=["min", "opt", "max"])
@pytest.mark.parametrize("model", ["face_detector", "face_regressor"])
def test_engine_matches_onnxruntime(
    engines: dict[str, Path], tiny_onnx: dict[str, Path], model: str, which: int
) -> None:
    import onnxruntime as ort

    shapes = {name: shape[which] for name, shape in _tiny_profiles(model).items()}
    inputs = _inputs(shapes)
    session = ort.InferenceSession(str(tiny_onnx[model]), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, inputs), strict=True))
    got = _run_engine(engines[model], inputs)
    for name, ref in expected.items():
        assert got[name].shape == ref.shape
        err = np.linalg.norm(got[name] - ref) / np.linalg.norm(ref)
        assert err < 2e-3, f"{model} {name}: relative error {err:.2e}"  # TF32 tactics allowed


@needs_tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("which", [0, 1, 2], ids=["min", "opt", "max"])
def test_detector_graph_engine_matches_onnxruntime(
    engines: dict[str, Path], tiny_onnx: dict[str, Path], asset_dir: Path, which: int
) -> None:
    """The whole detector (uint8 frames of the profile's min/opt/max size, photos resized to
    it) in TensorRT vs onnxruntime: same face counts, boxes within 2 px (TensorRT evaluates
    the rescale rule in float32 and the network with its own tactics)."""
    import onnxruntime as ort
    from PIL import Image

    shape = _tiny_profiles("face_detector_graph")["IMAGE"][which]
    batch, height, width, _ = shape
    photos = sorted((asset_dir / "images").glob("*.jpg"))
    frames = np.stack(
        [
            np.asarray(Image.open(photos[i % len(photos)]).convert("RGB").resize((width, height)))
            for i in range(batch)
        ]
    )
    session = ort.InferenceSession(
        str(tiny_onnx["face_detector_graph"]), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, {"IMAGE": frames}), strict=True))
    got = _run_engine(engines["face_detector_graph"], {"IMAGE": frames})
    np.testing.assert_array_equal(got["FACE_COUNT"], expected["FACE_COUNT"])
    np.testing.assert_array_equal(got["NUM_FACES"], expected["FACE_COUNT"])
    np.testing.assert_allclose(got["FACE_BOXES"][..., :4], expected["FACE_BOXES"][..., :4], atol=2)
    np.testing.assert_allclose(got["FACE_BOXES"][..., 4], expected["FACE_BOXES"][..., 4], atol=1e-2)
    np.testing.assert_array_equal(got["DETECTIONS"], got["FACE_BOXES"])


@needs_tensorrt
@pytest.mark.gpu
def test_engine_files_are_described(engines: dict[str, Path]) -> None:
    import tensorrt as trt

    for name, path in engines.items():
        assert path.name.startswith(f"{name}.") and f".trt{trt.__version__}." in path.name
        record = json.loads(path.with_suffix(".json").read_text())
        assert record["tensorrt_version"] == trt.__version__ and record["precision"] == "fp32"
        assert record["profiles"][0] == {
            k: [list(s) for s in v] for k, v in _tiny_profiles(name).items()
        }
    assert (path.parent / "timing.cache").stat().st_size > 0


# ---- build_engine's flow against a stand-in of the tensorrt module (runs everywhere) ----


@pytest.fixture()
def tiny_regressor_onnx(tmp_path: Path) -> Path:
    """A one-node stand-in graph with the face_regressor's input and output names."""
    import onnx
    from onnx import TensorProto, helper

    crops = helper.make_tensor_value_info(
        "CROPS", TensorProto.FLOAT, ["batch", "faces", 3, REGRESSOR_SIZE, REGRESSOR_SIZE]
    )
    out = helper.make_tensor_value_info(
        "PARAMS_NORM", TensorProto.FLOAT, ["batch", "faces", NUM_PARAMS]
    )
    node = helper.make_node(
        "Slice",
        ["CROPS", "starts", "ends", "axes"],
        ["SLICED"],
    )
    shape = helper.make_node("Reshape", ["SLICED", "shape"], ["PARAMS_NORM"])
    constants = [
        helper.make_tensor("starts", TensorProto.INT64, [3], [0, 0, 0]),
        helper.make_tensor("ends", TensorProto.INT64, [3], [1, 1, NUM_PARAMS]),
        helper.make_tensor("axes", TensorProto.INT64, [3], [2, 3, 4]),
        helper.make_tensor("shape", TensorProto.INT64, [3], [0, 0, NUM_PARAMS]),
    ]
    graph = helper.make_graph([node, shape], "g", [crops], [out], initializer=constants)
    path = tmp_path / "face_regressor.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_build_engine_flow(
    monkeypatch: pytest.MonkeyPatch, tiny_regressor_onnx: Path, tmp_path: Path
) -> None:
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(tensorrt_builder, "gpu_name", lambda device=0: "NVIDIA H100 80GB HBM3")
    cache = tmp_path / "cache" / "timing.cache"
    profile = default_profiles(PipelineConfig(), 8)["face_regressor"]
    path = build_engine(
        tiny_regressor_onnx, tmp_path / "out", profiles=profile, fp16=False, timing_cache=cache
    )
    assert path.name == "face_regressor.H100.trt10.0.0.fp32.plan"
    assert path.read_bytes() == b"PLAN" and cache.read_bytes() == b"CACHE"
    assert fake.calls["flags"] == set() and fake.calls["network_flags"] == 0
    assert fake.calls["profiles"] == [dict(profile)]
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["gpu"] == "NVIDIA H100 80GB HBM3" and record["precision"] == "fp32"
    assert record["profiles"] == [{k: [list(s) for s in v] for k, v in profile.items()}]
    build_engine(
        tiny_regressor_onnx, tmp_path / "out", profiles=profile, fp16=False, timing_cache=cache
    )
    assert fake.calls["cache_in"] == b"CACHE"  # the saved cache is loaded on the next build
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "face_regressor.H100.trt10.0.0.fp32.json",
        "face_regressor.H100.trt10.0.0.fp32.plan",
    ]


def test_build_engine_reports_parser_errors(
    monkeypatch: pytest.MonkeyPatch, tiny_regressor_onnx: Path, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(["node 3: unsupported op Foo"]))
    profile = default_profiles(PipelineConfig(), 8)["face_regressor"]
    with pytest.raises(RuntimeError, match="unsupported op Foo"):
        build_engine(tiny_regressor_onnx, tmp_path, profiles=profile)
    assert not list(tmp_path.glob("*.plan"))


def test_build_engine_is_fp16_by_default(
    monkeypatch: pytest.MonkeyPatch, tiny_regressor_onnx: Path, tmp_path: Path
) -> None:
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(tensorrt_builder, "gpu_name", lambda device=0: "Tesla T4")
    profile = default_profiles(PipelineConfig(), 2)["face_regressor"]
    path = build_engine(tiny_regressor_onnx, tmp_path / "out", profiles=profile)
    assert path.name == "face_regressor.T4.trt10.0.0.fp16.plan"
    assert fake.calls["flags"] == {"fp16"} and fake.calls["workspace"] > 0
