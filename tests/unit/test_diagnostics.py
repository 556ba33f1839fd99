"""tddfa_triton.diagnostics: the stack dump a hung model instance gives on SIGUSR1, and the
once-only notice of tensors that crossed GPUs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

# loaded by path: the package's __init__ imports the adapter, which needs Triton's stub
MODULE = Path(__file__).resolve().parents[2] / "python_backends/tddfa_triton/diagnostics.py"
_spec = importlib.util.spec_from_file_location("tddfa_diagnostics", MODULE)
diagnostics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(diagnostics)


def test_sigusr1_dumps_every_thread_while_the_main_thread_blocks():
    """The main thread sits in a blocking call (as a stub stuck in CUDA would); the signal
    still writes both threads' stacks, with our function names, to stderr."""
    script = textwrap.dedent(
        """
        import importlib.util, os, signal, sys, threading, time
        spec = importlib.util.spec_from_file_location("d", sys.argv[1])
        d = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(d)
        assert d.install_stack_dump()
        def helper_waits():
            time.sleep(30)
        threading.Thread(target=helper_waits, daemon=True).start()
        def main_blocks():
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            time.sleep(1.0)
        main_blocks()
        print("survived")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(MODULE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "survived" in done.stdout  # the dump does not kill the process
    assert "helper_waits" in done.stderr and "main_blocks" in done.stderr


def test_cross_device_notice_once_per_input_and_gpu():
    notice = diagnostics.CrossDeviceNotice()
    assert notice.first("IMAGE", 0)
    assert not notice.first("IMAGE", 0)
    assert notice.first("IMAGE", 1)
    assert notice.first("ALPHA_SHP", 0)
