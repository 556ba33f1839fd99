"""tritonserver's lines keep Triton's level; its GPU probes on a CPU repository go to DEBUG."""

from __future__ import annotations

import logging

import pytest

from tddfa_tools.serve.server_log import line_level

LINES = {
    'I1206 17:42:38.211017 2133 server.cc:674] "ready"': logging.INFO,
    'W1206 17:42:38.211017 2133 model.cc:1] "slow"': logging.WARNING,
    "E1206 17:42:38.211167 2133 model.cc:2] \"failed to load 'x'\"": logging.ERROR,
    '2026-12-06T17:42:38Z E 2133 model.cc:2] "failed"': logging.ERROR,  # ISO8601 format
    "| Model | Version | Status |": logging.INFO,  # no severity: the default
    "Impossible: not a severity letter": logging.INFO,
}
GPU_PROBE = 'E1206 17:42:38.211167 2133 server.cc:241] "CudaDriverHelper has not been initialized."'


@pytest.mark.parametrize("line", LINES)
def test_triton_lines_keep_their_level(line: str) -> None:
    assert line_level(line, logging.INFO, gpu_build=False) == LINES[line]


def test_gpu_probes_are_expected_only_without_gpu_instances() -> None:
    assert line_level(GPU_PROBE, logging.INFO, gpu_build=False) == logging.DEBUG
    assert line_level(GPU_PROBE, logging.INFO, gpu_build=True) == logging.ERROR
