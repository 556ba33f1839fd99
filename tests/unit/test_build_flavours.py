"""`tddfa build` for every flavour, end to end but without the exports: small stand-in ONNX
files replace the exported networks and the stand-in tensorrt module (tests/tensorrt_stand_in.py)
builds the "engines", so the files placed, the configs written and the checks the builder
runs (wiring, contract, BLS) are tested here for python, onnxruntime and tensorrt."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tensorrt_stand_in import FakeTensorRT

from tddfa.config import PipelineConfig
from tddfa.engine_cache import read_profiles
from tddfa_tools.build import repository, tensorrt_builder
from tddfa_tools.build.exports import BuiltModels
from tddfa_tools.build.model_config import check_bls, check_ensemble, load_repository
from tddfa_tools.build.options import BuildOptions
from tddfa_tools.build.repository import build_repository
from tddfa_tools.build.tensorrt_builder import default_profiles

MAX_BATCH = 4
PIPELINE = PipelineConfig(max_faces=3)


def _stand_in_onnx(path: Path, inputs: dict, outputs: dict) -> Path:
    """A graph that declares ``inputs`` and ``outputs`` ({name: (dims, onnx dtype)}), each
    output a Cast of the first input: all the builder reads of a network is its file and the
    I/O it declares (it never runs it)."""
    import onnx
    from onnx import helper

    first = next(iter(inputs))
    nodes = [helper.make_node("Cast", [first], [name], to=t) for name, (_, t) in outputs.items()]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info(n, t, d) for n, (d, t) in inputs.items()],
        [helper.make_tensor_value_info(n, t, d) for n, (d, t) in outputs.items()],
    )
    onnx.save(helper.make_model(graph), path)
    return path


@pytest.fixture()
def stand_in_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """export_models replaced: stand-in networks, detector graph, BFM and weights."""
    from onnx import TensorProto

    src = tmp_path / "exports"
    src.mkdir()
    f32, u8, i32 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT32
    k = PIPELINE.max_faces
    files = {
        "face_detector": _stand_in_onnx(
            src / "face_detector.onnx",
            {"DETECTOR_INPUT": (["batch", 3, "h", "w"], f32)},
            {"LOC": (["batch", "p", 4], f32), "CONF": (["batch", "p", 2], f32)},
        ),
        "face_regressor": _stand_in_onnx(
            src / "face_regressor_mb05.onnx",
            {"CROPS": (["batch", "faces", 3, 120, 120], f32)},
            {"PARAMS_NORM": (["batch", "faces", 62], f32)},
        ),
        "graph": _stand_in_onnx(
            src / "face_detector_graph.onnx",
            {"IMAGE": (["batch", "h", "w", 3], u8)},
            {
                "FACE_BOXES": (["batch", k, 5], f32),
                "FACE_COUNT": (["batch", 1], i32),
                "DETECTIONS": (["batch", k, 5], f32),
                "NUM_FACES": (["batch", 1], i32),
            },
        ),
    }
    for name in ("bfm.npz", "render_assets.npz", "FaceBoxesProd.pth", "mb05_120x120.pth"):
        files[name] = src / name
        files[name].write_bytes(name.encode())

    def export_models(options: BuildOptions) -> BuiltModels:
        python = options.flavour == "python"
        return BuiltModels(
            networks={
                **({"face_detector": files["face_detector"]} if python else {}),
                "face_regressor": files["face_regressor"],
            },
            bfm=files["bfm.npz"],
            render_assets=files["render_assets.npz"],
            regressor_name="mb05",
            bfm_exact=False,
            torch_weights={
                "face_detector": files["FaceBoxesProd.pth"],
                "face_regressor": files["mb05_120x120.pth"],
            },
            detector_graph=None if python else files["graph"],
        )

    monkeypatch.setattr(repository, "export_models", export_models)
    return files


@pytest.fixture()
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(tensorrt_builder, "gpu_name", lambda device=0: "NVIDIA H200")
    return fake


def build(tmp_path: Path, **options) -> Path:
    return build_repository(
        BuildOptions(
            out=tmp_path / "repo",
            models_dir=tmp_path / "models",
            pipeline=PIPELINE,
            max_batch_size=MAX_BATCH,
            **options,
        )
    )


def served_by(repo: Path) -> dict[str, str]:
    return {name: c.platform or c.backend for name, c in load_repository(repo).items()}


def test_python_in_process(stand_in_exports, tmp_path):
    repo = build(tmp_path)
    assert "face_regressor" not in served_by(repo)
    assert not (repo / "face_regressor").exists()
    network = default_profiles(PIPELINE, MAX_BATCH, detector="network")
    for step, net in [
        ("face_detector", "face_detector"),
        ("face_aligner", "face_regressor"),
        ("face_tracker", "face_detector"),
        ("face_tracker", "face_regressor"),
    ]:
        folder = repo / step / "1" / net
        assert (folder / "model.onnx").read_bytes() == stand_in_exports[net].read_bytes()
        # the profile the python runner builds a TensorRT engine with
        assert read_profiles(folder) == {
            k: tuple(tuple(s) for s in v) for k, v in network[net].items()
        }
        assert not list(folder.glob("*.pth"))  # CPU build: no PyTorch weights
    build_json = json.loads((repo / "BUILD.json").read_text())
    assert build_json["flavour"] == "python" and build_json["networks"] == "in-process"


def test_python_networks_as_models_on_the_gpu(stand_in_exports, tmp_path):
    repo = build(tmp_path, networks="models", device="gpu")
    configs = load_repository(repo)
    assert served_by(repo)["face_regressor"] == "python"
    version = repo / "face_regressor" / "1"
    assert {p.name for p in version.iterdir()} >= {
        "model.py",
        "model.onnx",
        "tensorrt_profiles.json",
        "mb05_120x120.pth",
    }
    assert not (repo / "face_aligner" / "1" / "face_regressor").exists()  # called through BLS
    assert not (repo / "face_tracker" / "1" / "face_detector").exists()
    assert (repo / "face_detector" / "1" / "face_detector" / "FaceBoxesProd.pth").is_file()
    params = configs["face_tracker"].parameters
    assert params["face_detector_model"].string_value == "face_detector"
    assert params["face_regressor_model"].string_value == "face_regressor"
    assert configs["face_regressor"].parameters["face_regressor_precision"].string_value == "fp16"
    assert configs["face_regressor"].parameters["max_faces"].string_value == "3"
    assert check_bls(configs) == []


def test_onnxruntime(stand_in_exports, tmp_path):
    repo = build(tmp_path, flavour="onnxruntime")
    served = served_by(repo)
    assert served["face_detector"] == served["face_regressor"] == "onnxruntime_onnx"
    assert served["face_aligner"] == served["face_tracker"] == "python"
    for name, source in (("face_detector", "graph"), ("face_regressor", "face_regressor")):
        version = repo / name / "1"
        assert {p.name for p in version.iterdir()} == {"model.onnx"}  # no model.py
        assert (version / "model.onnx").read_bytes() == stand_in_exports[source].read_bytes()
    assert not (repo / "face_tracker" / "1" / "face_detector").exists()
    configs = load_repository(repo)
    assert configs["face_detector"].parameters["max_faces"].string_value == "3"
    assert configs["face_detector"].output[0].dims == [3, 5]
    for ensemble in ("tddfa", "tddfa_track"):
        assert check_ensemble(configs, ensemble) == []


def test_tensorrt_engines_built_once_and_described(stand_in_exports, fake_tensorrt, tmp_path):
    repo = build(tmp_path, flavour="tensorrt", device="gpu")
    served = served_by(repo)
    assert served["face_detector"] == served["face_regressor"] == "tensorrt_plan"
    graph = default_profiles(PIPELINE, MAX_BATCH)
    assert fake_tensorrt.calls["profiles"] == [graph["face_detector"], graph["face_regressor"]]
    for name, precision in (("face_detector", "fp32"), ("face_regressor", "fp16")):
        version = repo / name / "1"
        assert {p.name for p in version.iterdir()} == {"model.plan", "model.plan.json"}
        assert (version / "model.plan").read_bytes() == b"PLAN"
        record = json.loads((version / "model.plan.json").read_text())
        assert record["gpu"] == "NVIDIA H200" and record["tensorrt_version"] == "10.0.0"
        assert record["precision"] == precision  # the detector stays fp32 (flavours.precision)
    configs = load_repository(repo)
    assert all(g.kind == g.KIND_GPU for g in configs["face_regressor"].instance_group)
    build(tmp_path, flavour="tensorrt", device="gpu")  # a rebuild reuses the cached engines
    assert len(fake_tensorrt.calls["profiles"]) == 2


def test_tensorrt_without_the_builder_says_so(stand_in_exports, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ImportError, match="TensorRT builder not installed"):
        build(tmp_path, flavour="tensorrt", device="gpu")
    assert not (tmp_path / "repo").exists()  # nothing half-written


def test_a_graph_that_does_not_fit_its_config_fails_the_build(stand_in_exports, tmp_path):
    """What Triton's onnxruntime backend would refuse at load time, found at build time."""
    from onnx import TensorProto

    _stand_in_onnx(
        stand_in_exports["graph"],
        {"IMAGE": (["batch", "h", "w", 3], TensorProto.UINT8)},
        {
            "FACE_BOXES": (["batch", 8, 5], TensorProto.FLOAT),  # K = 8, the build's K is 3
            "FACE_COUNT": (["batch", 1], TensorProto.INT64),
            "DETECTIONS": (["batch", 8, 5], TensorProto.FLOAT),
        },
    )
    with pytest.raises(RuntimeError) as error:
        build(tmp_path, flavour="onnxruntime")
    message = str(error.value)
    assert "face_detector: FACE_BOXES has dims [-1, 8, 5] in face_detector_graph.onnx" in message
    assert "FACE_COUNT is TYPE_INT64 in face_detector_graph.onnx, TYPE_INT32" in message
    assert "NUM_FACES is not an input or output of face_detector_graph.onnx" in message
    assert not (tmp_path / "repo").exists()
