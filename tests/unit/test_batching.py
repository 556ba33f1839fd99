"""run_batched: one result per request, in order; bad requests isolated; shapes grouped."""

import numpy as np
import pytest

from tddfa.batching import run_batched


class DoublingStep:
    """Doubles X; refuses negative values; counts how often it ran."""

    def __init__(self):
        self.calls = []

    def validate(self, inputs):
        if (inputs["X"] < 0).any():
            raise ValueError("X must be >= 0")

    def run(self, inputs):
        self.calls.append(inputs["X"].shape)
        return {"Y": inputs["X"] * 2}


def test_equal_shapes_run_once_and_split_in_order():
    step = DoublingStep()
    requests = [{"X": np.full((n, 3), n, np.float32)} for n in (1, 2, 1)]
    results = run_batched(step, requests)
    assert step.calls == [(4, 3)]
    assert [r["Y"].shape for r in results] == [(1, 3), (2, 3), (1, 3)]
    for n, result in zip((1, 2, 1), results, strict=True):
        np.testing.assert_array_equal(result["Y"], 2 * n)


def test_bad_request_fails_alone():
    step = DoublingStep()
    requests = [{"X": np.ones((1, 3))}, {"X": -np.ones((1, 3))}, {"X": np.ones((1, 3))}]
    results = run_batched(step, requests)
    assert isinstance(results[1], ValueError) and "X must be >= 0" in str(results[1])
    assert step.calls == [(2, 3)]
    np.testing.assert_array_equal(results[0]["Y"], 2)
    np.testing.assert_array_equal(results[2]["Y"], 2)


def test_read_errors_pass_through_and_shapes_group_separately():
    step = DoublingStep()
    error = ValueError("input X is missing")
    requests = [{"X": np.ones((1, 3))}, error, {"X": np.ones((1, 5))}, {"X": np.ones((1, 3))}]
    results = run_batched(step, requests)
    assert results[1] is error
    assert sorted(step.calls) == [(1, 5), (2, 3)]
    assert results[2]["Y"].shape == (1, 5)


def test_value_error_in_run_fails_only_that_group():
    class Picky(DoublingStep):
        def run(self, inputs):
            if inputs["X"].shape[1] == 5:
                raise ValueError("cannot do 5")
            return super().run(inputs)

    results = run_batched(Picky(), [{"X": np.ones((1, 5))}, {"X": np.ones((1, 3))}])
    assert isinstance(results[0], ValueError)
    assert results[1]["Y"].shape == (1, 3)


@pytest.mark.parametrize("count", [0, 1, 7])
def test_result_count_equals_request_count(count):
    results = run_batched(DoublingStep(), [{"X": np.ones((1, 2))}] * count)
    assert len(results) == count
