"""The committed repository parses and its ensemble is wired consistently; broken
wirings are caught (negative cases, as dali_backend's QA does)."""

import copy
from pathlib import Path

import pytest

from tddfa.config import PipelineConfig
from tddfa_tools.model_config import check_ensemble, load_config, load_repository
from tddfa_tools.repository import tensor_dims

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
STEPS = [
    "preprocess",
    "face_detector",
    "roi_crop",
    "face_regressor",
    "landmark_to_vertex",
    "bfm_decoder",
    "face_renderer",
]


@pytest.fixture(scope="module")
def configs():
    return load_repository(REPOSITORY)


def test_every_step_has_config_and_adapter(configs):
    assert set(configs) == {"tddfa", *STEPS}
    for name in STEPS:
        assert (REPOSITORY / name / "1" / "model.py").is_file(), name
    assert [s.model_name for s in configs["tddfa"].ensemble_scheduling.step] == STEPS


def test_ensemble_wiring_is_consistent(configs):
    assert check_ensemble(configs) == []


def test_contract_outputs(configs):
    outputs = {o.name for o in configs["tddfa"].output}
    assert outputs == {
        "RENDERED",
        "FACE_COUNT",
        "FACE_BOXES",
        "LANDMARKS",
        "POSE",
        "PARAMS",
        "VERTICES",
    }
    assert [i.name for i in configs["tddfa"].input] == ["IMAGE"]


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
                c["roi_crop"].input[1].ClearField("dims")
                or c["roi_crop"].input[1].dims.extend([1, 4])
            ),
            "expects [1, 4]",
        ),
        (lambda c: setattr(c["face_regressor"].input[0], "data_type", 12), "expects TYPE_FP64"),
        (
            lambda c: c["tddfa"].ensemble_scheduling.step[3].input_map.__setitem__("CROPS", "NOPE"),
            "'NOPE' is not produced",
        ),
        (
            lambda c: c["tddfa"].ensemble_scheduling.step[4].input_map.pop("NUM_FACES"),
            "required input 'NUM_FACES' is not mapped",
        ),
        (lambda c: setattr(c["bfm_decoder"], "max_batch_size", 1), "max_batch_size 1 <"),
        (lambda c: c.pop("face_renderer"), "'face_renderer' is not in the repository"),
        (
            lambda c: c["tddfa"].ensemble_scheduling.step[6].output_map.pop("VERTICES"),
            "output 'VERTICES' is produced by no step",
        ),
        (
            lambda c: (
                c["tddfa"]
                .ensemble_scheduling.step[4]
                .input_map.__setitem__("NUM_FACES", "FACE_COUNT")
            ),
            "output 'FACE_COUNT' is also a step input",
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
