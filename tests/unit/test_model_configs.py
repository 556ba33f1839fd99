"""The committed repository parses and its ensemble is wired consistently; broken
wirings are caught (negative cases, as dali_backend's QA does)."""

import copy
from pathlib import Path

import pytest

from tddfa.config import PipelineConfig
from tddfa.contract import OUTPUT_NAMES, SEQUENCE_OUTPUT_NAMES
from tddfa_tools.model_config import check_contract, check_ensemble, load_config, load_repository
from tddfa_tools.repository import tensor_dims

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
STEPS = ["face_detector", "face_aligner", "face_renderer", "face_vertices"]
SEQUENCE_STEPS = ["face_tracker", "face_renderer", "face_vertices"]
ENSEMBLES = ["tddfa", "tddfa_track"]


@pytest.fixture(scope="module")
def configs():
    return load_repository(REPOSITORY)


def test_every_step_has_config_and_adapter(configs):
    assert set(configs) == {*ENSEMBLES, *STEPS, *SEQUENCE_STEPS}
    for name in set(STEPS) | set(SEQUENCE_STEPS):
        assert (REPOSITORY / name / "1" / "model.py").is_file(), name
    assert [s.model_name for s in configs["tddfa"].ensemble_scheduling.step] == STEPS
    assert [s.model_name for s in configs["tddfa_track"].ensemble_scheduling.step] == SEQUENCE_STEPS


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_ensemble_wiring_is_consistent(configs, ensemble):
    assert check_ensemble(configs, ensemble) == []


def test_outputs_follow_the_contract(configs):
    assert check_contract(configs) == []
    assert [o.name for o in configs["tddfa"].output] == list(OUTPUT_NAMES)
    assert [o.name for o in configs["tddfa_track"].output] == list(SEQUENCE_OUTPUT_NAMES)
    for ensemble in ENSEMBLES:
        assert [i.name for i in configs[ensemble].input] == ["IMAGE"]


def test_contract_drift_is_reported(configs):
    broken = copy.deepcopy(configs)
    broken["tddfa_track"].output.pop()  # DETECTED
    broken["tddfa"].output[1].data_type = 9  # FACE_COUNT as INT32 -> INT64
    problems = check_contract(broken)
    assert any("'DETECTED' is not declared" in p for p in problems), problems
    assert any("'FACE_COUNT' is TYPE_INT64" in p for p in problems), problems


def test_tracker_is_a_sequence_model(configs):
    batching = configs["face_tracker"].sequence_batching
    controls = {c.name: c.control[0].kind for c in batching.control_input}
    assert set(controls) == {"START", "END", "READY", "CORRID"}
    assert batching.max_sequence_idle_microseconds > 0
    assert batching.HasField("oldest")  # many sequences share a batch


def test_committed_dims_match_the_default_pipeline(configs):
    dims = tensor_dims(PipelineConfig())
    for config in configs.values():
        for tensor in list(config.input) + list(config.output):
            if tensor.name in dims:
                assert list(tensor.dims) == dims[tensor.name], (config.name, tensor.name)


def test_parameters_are_pipeline_fields(configs):
    known = set(PipelineConfig().to_parameters()) | {"regressor", "bfm"}
    for config in configs.values():
        assert set(config.parameters) <= known, config.name


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
