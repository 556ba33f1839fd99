"""Run a step over several Triton requests at once, the way PyTriton's ``@batch`` does.

Each request carries a batch of frames. Valid requests whose inputs have equal
per-frame shapes are concatenated, run once, and split back by their batch sizes;
a request that fails validation gets its own error and never fails its batch-mates.

Request parameters (Triton's per-request ``parameters``, e.g. ``render_mode``) reach only
the steps that name them in ``request_parameters``; such a step gets one dict per frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from tddfa.xp import get_xp

Arrays = Mapping[str, Any]


class Step(Protocol):
    """A pipeline step: named arrays in, named arrays out, batch along axis 0."""

    def validate(self, inputs: Arrays) -> None:
        """Raise ValueError (message: problem and fix) if one request's inputs are bad."""

    def run(self, inputs: Arrays) -> dict[str, Any]:
        """Process a batch; every output has the same leading batch size as the inputs.
        A step with ``request_parameters`` takes ``parameters=[dict per frame]`` too."""


def _shape_key(inputs: Arrays) -> tuple:
    return tuple((name, tuple(array.shape[1:]), str(array.dtype)) for name, array in inputs.items())


def run_batched(
    step: Step,
    requests: Sequence[Arrays | Exception],
    parameters: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict | Exception]:
    """Validate and run ``requests`` (inputs per request, or an Exception already raised
    while reading them); return one result per request, in order: outputs or the error.
    ``parameters``: each request's parameters (only the step's ``request_parameters`` are
    kept, checked by its ``validate_parameters``)."""
    names = tuple(getattr(step, "request_parameters", ()))
    chosen: list[dict] = [
        {k: v for k, v in (parameters[i] if parameters else {}).items() if k in names}
        for i in range(len(requests))
    ]
    results: list[dict | Exception | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for index, inputs in enumerate(requests):
        if isinstance(inputs, Exception):
            results[index] = inputs
            continue
        try:
            step.validate(inputs)
            if names:
                step.validate_parameters(chosen[index])
        except ValueError as exc:
            results[index] = exc
            continue
        groups.setdefault(_shape_key(inputs), []).append(index)

    for indices in groups.values():
        members = [requests[i] for i in indices]
        sizes = [len(next(iter(m.values()))) for m in members]
        extra = {}
        if names:  # one dict per frame
            extra["parameters"] = [
                chosen[i] for i, n in zip(indices, sizes, strict=True) for _ in range(n)
            ]
        try:
            if len(members) == 1:
                outputs = step.run(members[0], **extra)
                splits = [outputs]
            else:
                first = next(iter(members[0].values()))
                xp = get_xp(first)
                stacked = {name: xp.concatenate([m[name] for m in members]) for name in members[0]}
                outputs = step.run(stacked, **extra)
                splits = _split(outputs, sizes)
        except ValueError as exc:  # a bad batch fails only its own requests
            splits = [exc] * len(members)
        for index, result in zip(indices, splits, strict=True):
            results[index] = result
    return results  # type: ignore[return-value]


def _split(outputs: Mapping[str, Any], sizes: Sequence[int]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{} for _ in sizes]
    for name, array in outputs.items():
        start = 0
        for part, size in zip(parts, sizes, strict=True):
            part[name] = array[start : start + size]
            start += size
    return parts
