"""tddfa.cpu_threads: numpy's BLAS limited to one thread (in a child process: the limit is
process-wide)."""

import subprocess
import sys

CHECK = """
import numpy, threadpoolctl
from tddfa.cpu_threads import blas_on_one_thread
blas_on_one_thread()
blas = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
assert blas, "numpy's BLAS not found"
assert all(p["num_threads"] == 1 for p in blas), blas
"""


def test_blas_on_one_thread():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
