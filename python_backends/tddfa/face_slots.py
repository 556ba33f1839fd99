"""Per-face networks on the filled face slots only.

A frame has K face slots (static shapes); the first ``count`` are filled. On the CPU the
per-face network (the 3DMM regressor) should run on those only: one face costs one crop,
not K. On the GPU the K-slot shape stays, so CUDA graphs replay and nothing waits for the
counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tddfa.xp import get_xp, to_numpy


def _trailing_shapes(runner) -> dict[str, tuple[int, ...]] | None:
    """Per-face output shapes (past the (N, K) axes) the runner declares (``face_shapes``,
    e.g. a BLS runner) or its onnxruntime session declares."""
    declared = getattr(runner, "face_shapes", None)
    if declared:
        return {name: tuple(shape) for name, shape in declared.items()}
    session = getattr(runner, "session", None)
    if session is None:
        return None
    shapes = {o.name: tuple(o.shape[2:]) for o in session.get_outputs()}
    if not all(isinstance(d, int) for dims in shapes.values() for d in dims):
        return None
    return shapes


def run_filled_slots(
    runner, inputs: Mapping[str, Any], counts: Any, *, static: bool | None = None
) -> dict[str, Any]:
    """Run a per-face network (inputs and outputs shaped (B, K, ...)) on the filled slots.

    On the CPU (``static=False``, the default for numpy) only the ``F = sum(counts)`` filled
    slots run, as one (1, F, ...) batch (the regressor's face axis is dynamic), and F = 0
    runs nothing. On the GPU (``static=True``, the default for device arrays) all B x K
    slots run, so the shapes stay fixed for CUDA graphs and nothing waits for the counts;
    the empty slots are zeroed afterwards.

    Args:
        runner: a :mod:`tddfa.runners` runner, e.g. the face_regressor
            (``CROPS`` (N, K, 3, 120, 120) -> ``PARAMS_NORM`` (N, K, 62)).
        inputs: {input name: (B, K, ...) array}, numpy or device arrays.
        counts: (B,) or (B, 1) integer faces per frame; slots ``k < counts[b]`` are filled.
        static: run all slots (None: True for device arrays, False for numpy).

    Returns:
        {output name: (B, K, ...) float32 array}, zeros in the empty slots.
    """
    first = inputs[runner.input_names[0]]
    xp = get_xp(first)
    if static is None:
        static = xp is not np
    batch, slots = int(first.shape[0]), int(first.shape[1])
    filled = xp.arange(slots)[None, :] < xp.asarray(counts).reshape(-1, 1)  # (B, K)
    if static:
        outputs = runner.run(inputs)
        return {
            name: xp.where(filled.reshape(filled.shape + (1,) * (out.ndim - 2)), out, 0).astype(
                xp.float32, copy=False
            )
            for name, out in outputs.items()
        }
    filled = to_numpy(filled)
    faces = int(filled.sum())
    if faces == 0:
        shapes = _trailing_shapes(runner)
        if shapes is not None:
            return {n: np.zeros((batch, slots, *s), np.float32) for n, s in shapes.items()}
        faces_in = {n: inputs[n][:, :1] for n in runner.input_names}  # shapes from one slot
        return {
            n: np.zeros((batch, slots, *out.shape[2:]), np.float32)
            for n, out in runner.run(faces_in).items()
        }
    outputs = runner.run({n: to_numpy(inputs[n])[filled][None] for n in runner.input_names})
    result = {}
    for name, out in outputs.items():
        out = to_numpy(out)
        full = np.zeros((batch, slots, *out.shape[2:]), np.float32)
        full[filled] = out[0]
        result[name] = full
    return result
