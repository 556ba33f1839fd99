"""tddfa_triton.diagnostics: the stack dump a hung model instance gives on SIGUSR1, and the
once-only notice of tensors that crossed GPUs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import time
from pathlib import Path

# loaded by path: the package's __init__ imports the adapter, which needs Triton's stub
MODULE = Path(__file__).resolve().parents[2] / "python_backends/tddfa_triton/diagnostics.py"
_spec = importlib.util.spec_from_file_location("tddfa_diagnostics", MODULE)
diagnostics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(diagnostics)


def test_sigusr1_dumps_every_thread_while_the_main_thread_blocks():
    """The main thread sits in a blocking call (as a stub stuck in CUDA would); the signal
    still writes both threads' stacks, with our function names, to stderr, and the process
    lives on."""
    script = textwrap.dedent(
        """
        import importlib.util, sys, threading, time
        spec = importlib.util.spec_from_file_location("d", sys.argv[1])
        d = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(d)
        assert d.install_stack_dump()
        def helper_waits():
            time.sleep(60)
        threading.Thread(target=helper_waits, daemon=True).start()
        def main_blocks():
            print("ready", flush=True)
            time.sleep(60)
        main_blocks()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(MODULE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(diagnostics.STACK_DUMP_SIGNAL)
        seen = ""
        deadline = time.monotonic() + 30
        while "main_blocks" not in seen or "helper_waits" not in seen:
            assert time.monotonic() < deadline, f"no complete stack dump: {seen!r}"
            seen += process.stderr.readline()
        assert process.poll() is None  # the dump did not end the process
    finally:
        process.kill()
        process.communicate()


def test_cross_device_notice_once_per_input_and_gpu():
    notice = diagnostics.CrossDeviceNotice()
    assert notice.first("IMAGE", 0)
    assert not notice.first("IMAGE", 0)
    assert notice.first("IMAGE", 1)
    assert notice.first("ALPHA_SHP", 0)
