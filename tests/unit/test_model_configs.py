"""The committed repository parses and its ensembles are wired consistently, in every flavour's
layout (the BLS calls included); broken wirings are caught (negative cases, as dali_backend's
QA does)."""

import copy
from pathlib import Path

import pytest

from tddfa.config import PipelineConfig
from tddfa.contract import OUTPUT_NAMES, SEQUENCE_OUTPUT_NAMES
from tddfa_tools.build.exports import BuiltModels
from tddfa_tools.build.flavours import configure_networks, layout_for
from tddfa_tools.build.graph_config import graph_problems, write_graph
from tddfa_tools.build.model_config import (
    check_bls,
    check_ensemble,
    load_config,
    load_repository,
)
from tddfa_tools.build.options import BuildOptions
from tddfa_tools.build.repository import configure

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
STEPS = ["face_detector", "face_aligner", "face_renderer", "face_vertices"]
SEQUENCE_STEPS = ["face_tracker", "face_renderer", "face_vertices"]
ENSEMBLES = ["tddfa", "tddfa_track"]
NETWORK_MODELS = ["face_regressor"]  # served on its own in some flavours (BLS), in no ensemble
# (flavour, --networks, device): every layout tddfa_tools.build.flavours knows
LAYOUTS = [
    ("python", "in-process", "cpu"),
    ("python", "models", "cpu"),
    ("python", "models", "gpu"),
    ("onnxruntime", "models", "cpu"),
    ("tensorrt", "models", "gpu"),
]


@pytest.fixture(scope="module")
def configs():
    return load_repository(REPOSITORY)


def test_every_step_has_config_and_adapter(configs):
    assert set(configs) == {*ENSEMBLES, *STEPS, *SEQUENCE_STEPS, *NETWORK_MODELS}
    for name in set(STEPS) | set(SEQUENCE_STEPS) | set(NETWORK_MODELS):
        assert (REPOSITORY / name / "1" / "model.py").is_file(), name
    assert [s.model_name for s in configs["tddfa"].ensemble_scheduling.step] == STEPS
    assert [s.model_name for s in configs["tddfa_track"].ensemble_scheduling.step] == SEQUENCE_STEPS


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_ensemble_wiring_is_consistent(configs, ensemble):
    assert check_ensemble(configs, ensemble) == []


def test_outputs_follow_the_contract(configs):
    assert [o.name for o in configs["tddfa"].output] == list(OUTPUT_NAMES)
    assert [o.name for o in configs["tddfa_track"].output] == list(SEQUENCE_OUTPUT_NAMES)
    for ensemble in ENSEMBLES:
        assert [i.name for i in configs[ensemble].input] == ["IMAGE"]


def test_the_graph_declaration_is_consistent():
    from tddfa.graph import check_graph

    assert check_graph() == []


def test_committed_configs_are_the_graph_at_the_default_k(configs):
    """The committed tensors and wiring are what the build writes from tddfa.graph at K = 8
    (so a reader of model_repository/ sees the truth)."""
    assert graph_problems(configs, PipelineConfig().max_faces) == []
    rewritten = copy.deepcopy(configs)
    write_graph(rewritten, PipelineConfig().max_faces)
    for name, config in configs.items():
        assert rewritten[name] == config, name


def test_the_build_writes_the_graph_for_another_k(configs):
    built = copy.deepcopy(configs)
    write_graph(built, 3)
    assert graph_problems(built, 3) == []
    assert list(built["tddfa_track"].output[2].dims) == [3, 5]  # FACE_BOXES
    assert list(built["face_vertices"].output[0].dims) == [3, 3, 38365]
    assert graph_problems(configs, 3)  # the K = 8 templates are not a K = 3 build


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["tddfa_track"].output.pop(), "tddfa_track: outputs"),
        (lambda c: setattr(c["tddfa"].output[1], "data_type", 9), "tddfa: outputs"),
        (lambda c: c["face_aligner"].input[1].dims.__setitem__(0, 4), "face_aligner: inputs"),
        (lambda c: c["tddfa"].ensemble_scheduling.step[1].input_map.__setitem__(
            "DETECTIONS", "FACE_BOXES"), "map a tensor under another name"),
        (lambda c: c["tddfa"].ensemble_scheduling.step.pop(), "tddfa: steps"),
        (lambda c: c.pop("face_vertices"), "face_vertices: not in the repository"),
    ],
    ids=["missing-output", "dtype", "dims", "renamed-map", "missing-step", "missing-model"],
)  # fmt: skip
def test_drift_from_the_graph_is_reported(configs, mutate, expected):
    broken = copy.deepcopy(configs)
    mutate(broken)
    problems = graph_problems(broken, PipelineConfig().max_faces)
    assert any(expected in p for p in problems), problems


def test_tracker_is_a_sequence_model(configs):
    batching = configs["face_tracker"].sequence_batching
    controls = {c.name: c.control[0].kind for c in batching.control_input}
    assert set(controls) == {"START", "END", "READY", "CORRID"}
    assert batching.max_sequence_idle_microseconds > 0
    assert batching.HasField("oldest")  # many sequences share a batch


def test_parameters_are_pipeline_fields(configs):
    known = set(PipelineConfig().to_parameters()) | {"regressor", "bfm"}
    for config in configs.values():
        assert set(config.parameters) <= known, config.name


def flavour_configs(configs, flavour: str, networks: str, device: str) -> dict:
    """The template configs rewritten as `tddfa build` rewrites them for one layout."""
    built = copy.deepcopy(configs)
    options = BuildOptions(flavour=flavour, networks=networks, device=device)
    configure_networks(built, layout_for(flavour, networks), gpu=device == "gpu", fp16=True)
    models = BuiltModels(
        networks={},
        bfm=Path("bfm.npz"),
        render_assets=Path("render_assets.npz"),
        regressor_name="mb05",
        bfm_exact=False,
        torch_weights={},
    )
    configure(built, options, models)
    return built


@pytest.fixture(params=LAYOUTS, ids=["-".join(layout) for layout in LAYOUTS])
def layout_configs(request, configs):
    return request.param, flavour_configs(configs, *request.param)


def test_every_layout_is_wired_consistently(layout_configs):
    _, built = layout_configs
    for ensemble in ENSEMBLES:
        assert check_ensemble(built, ensemble) == []
    assert graph_problems(built, PipelineConfig().max_faces) == []
    assert check_bls(built) == []


def test_layouts_serve_the_networks_as_documented(layout_configs):
    """The flavour matrix of tools/build/flavours.py, read back from the configs."""
    (flavour, networks, device), built = layout_configs
    served = {name: config.platform or config.backend for name, config in built.items()}
    calls = {
        name: {k: v.string_value for k, v in config.parameters.items() if k.endswith("_model")}
        for name, config in built.items()
    }
    for step in ("face_aligner", "face_renderer", "face_vertices", "face_tracker"):
        assert served[step] == "python", step
    native = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}.get(flavour)
    if native:
        assert served["face_detector"] == served["face_regressor"] == native
        assert set(built["face_detector"].parameters) <= set(PipelineConfig().to_parameters())
    else:
        assert served["face_detector"] == "python"
    if networks == "in-process":
        assert "face_regressor" not in built
        assert all(not c for c in calls.values()), calls
        return
    if flavour == "python":
        assert served["face_regressor"] == "python"
    assert calls["face_aligner"] == {"face_regressor_model": "face_regressor"}
    assert calls["face_tracker"] == {
        "face_detector_model": "face_detector",
        "face_regressor_model": "face_regressor",
    }
    assert calls["face_detector"] == {}  # never a call to itself
    if device == "gpu":  # precision only where a network runs in Python
        precisions = {
            (name, k): v.string_value
            for name, config in built.items()
            for k, v in config.parameters.items()
            if k.endswith("_precision")
        }
        expected = {}
        if flavour == "python":
            expected = {
                ("face_detector", "face_detector_precision"): "fp32",
                ("face_regressor", "face_regressor_precision"): "fp16",
            }
        assert precisions == expected


def test_native_flavours_refuse_in_process_networks():
    with pytest.raises(ValueError, match="python flavour's choice"):
        BuildOptions(flavour="onnxruntime", networks="in-process")
    with pytest.raises(ValueError, match="needs --device gpu"):
        BuildOptions(flavour="tensorrt")
    assert BuildOptions(flavour="onnxruntime").networks == "models"
    assert BuildOptions().networks == "in-process"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.pop("face_regressor"), "no such model in the repository"),
        (
            lambda c: setattr(c["face_regressor"].input[0], "name", "CROP"),
            "the model has no input 'CROPS'",
        ),
        (
            lambda c: setattr(c["face_detector"].output[1], "data_type", 9),
            "output 'FACE_COUNT' is TYPE_INT64, the step uses TYPE_INT32",
        ),
        (
            lambda c: c["face_detector"].output[0].dims.__setitem__(0, 4),
            "output 'FACE_BOXES' has dims [4, 5], the step uses [8, 5]",
        ),
        (lambda c: setattr(c["face_regressor"], "max_batch_size", 2), "max_batch_size 2 <"),
        (
            lambda c: (
                c["face_aligner"]
                .parameters["face_regressor_model"]
                .__setattr__("string_value", "tddfa")
            ),
            "must name a network model",
        ),
    ],
    ids=["missing-model", "input-name", "dtype", "dims-vs-K", "batch-size", "ensemble"],
)
def test_broken_bls_calls_are_reported(configs, mutate, expected):
    broken = flavour_configs(configs, "onnxruntime", "models", "cpu")
    mutate(broken)
    problems = check_bls(broken)
    assert any(expected in p for p in problems), problems


def _broken(configs, mutate):
    broken = copy.deepcopy(configs)
    mutate(broken)
    return check_ensemble(broken)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda c: (
                c["face_aligner"].input[1].ClearField("dims")
                or c["face_aligner"].input[1].dims.extend([1, 4])
            ),
            "expects [1, 4]",
        ),
        (lambda c: setattr(c["face_aligner"].input[2], "data_type", 12), "expects TYPE_FP64"),
        (
            lambda c: (
                c["tddfa"].ensemble_scheduling.step[1].input_map.__setitem__("DETECTIONS", "NOPE")
            ),
            "'NOPE' is not produced",
        ),
        (
            lambda c: c["tddfa"].ensemble_scheduling.step[2].input_map.pop("NUM_FACES"),
            "required input 'NUM_FACES' is not mapped",
        ),
        (lambda c: setattr(c["face_vertices"], "max_batch_size", 1), "max_batch_size 1 <"),
        (lambda c: c.pop("face_renderer"), "'face_renderer' is not in the repository"),
        (
            lambda c: c["tddfa"].ensemble_scheduling.step[3].output_map.pop("VERTICES"),
            "output 'VERTICES' is produced by no step",
        ),
        (
            lambda c: (
                c["tddfa"]
                .ensemble_scheduling.step[1]
                .input_map.__setitem__("DETECTIONS", "FACE_BOXES")
            ),
            "output 'FACE_BOXES' is also a step input",
        ),
    ],
    ids=[
        "dims",
        "dtype",
        "unknown-tensor",
        "unmapped-input",
        "batch-size",
        "missing-model",
        "missing-output",
        "output-also-consumed",
    ],
)
def test_broken_wiring_is_reported(configs, mutate, expected):
    problems = _broken(configs, mutate)
    assert any(expected in p for p in problems), problems


def test_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "config.pbtxt"
    bad.write_text('name: "x"\ninput [ { name: "A" data_typo: TYPE_FP32 } ]\n')
    with pytest.raises(ValueError, match="config.pbtxt"):
        load_config(bad)
