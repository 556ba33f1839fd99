"""The level of each tritonserver log line, so that forwarded lines keep Triton's own level.

Triton prefixes its lines with a severity letter (``I``, ``W``, ``E``, ``F``), right before
the date (``I1206 17:42:38.211017 ...``) or after an ISO 8601 timestamp with
``--log-format=ISO8601``. Other lines (a Python model's own output) get the caller's default.

On a repository without GPU instances, Triton's GPU probes fail by design (no CUDA driver,
no DCGM) and say so at W and E: those lines are expected, so they go to DEBUG (``-v`` shows
them) with one INFO line saying why, instead of errors a user cannot act on.
"""

from __future__ import annotations

import logging
import re

LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_SEVERITY = re.compile(r"^(?:\d{4}-\d\d-\d\dT\S+ )?([IWEF])(?:\d{4} | )")
GPU_PROBE = re.compile(
    r"CUDA driver version is insufficient|CudaDriverHelper has not been initialized|"
    r"DCGM unable to start|no CUDA-capable device|(Unable|failed) to allocate pinned system memory"
)
NO_GPU_NOTE = (
    "tritonserver found no usable GPU; this repository runs on the CPU, so its GPU probe "
    "warnings are expected (shown with -v)"
)


def line_level(line: str, default: int, gpu_build: bool) -> int:
    """The logging level of one tritonserver line."""
    match = _SEVERITY.match(line)
    if match is None:
        return default
    level = LEVELS[match[1]]
    if level in (logging.WARNING, logging.ERROR) and not gpu_build and GPU_PROBE.search(line):
        return logging.DEBUG
    return level
