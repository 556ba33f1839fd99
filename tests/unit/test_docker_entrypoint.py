"""docker/Dockerfile's entrypoint, run here with stand-ins for nvidia-smi, tddfa, the MPS
control daemon and tritonserver: it builds the measured layout, starts MPS for GPU Python
steps, gives every GPU a memory pool, forwards SIGTERM and quits MPS after the server."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "docker" / "Dockerfile"


def entrypoint_script() -> str:
    text = DOCKERFILE.read_text()
    match = re.search(
        r"COPY --chmod=755 <<'EOF' /usr/local/bin/tddfa-entrypoint\n(.*?)\nEOF\n", text, re.S
    )
    assert match, "the entrypoint heredoc is missing from docker/Dockerfile"
    return match.group(1)


def tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture()
def sandbox(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    tool(
        bin_dir,
        "nvidia-smi",
        'case "$*" in *-L*) printf "GPU 0: H200\\nGPU 1: H200\\n";; *) echo "NVIDIA H200";; esac\n',
    )
    tool(
        bin_dir,
        "tddfa",
        f'echo "tddfa $*" >> {log}\n'
        'out=$(echo "$@" | sed "s/.*--out \\([^ ]*\\).*/\\1/")\n'
        'mkdir -p "$out/face_renderer" && echo "{}" > "$out/BUILD.json"\n'
        'echo "instance_group [ { kind: KIND_GPU } ]" > "$out/face_renderer/config.pbtxt"\n',
    )
    tool(
        bin_dir,
        "nvidia-cuda-mps-control",
        f'echo "mps $* $(cat 2>/dev/null) pipe=$CUDA_MPS_PIPE_DIRECTORY" >> {log}\n',
    )
    tool(
        bin_dir,
        "tritonserver",
        f"trap 'echo \"tritonserver got TERM\" >> {log}; exit 3' TERM\n"  # trap before announcing
        f'echo "tritonserver $* pipe=$CUDA_MPS_PIPE_DIRECTORY" >> {log}\n'
        "while true; do sleep 0.1; done\n",
    )
    tool(bin_dir, "python3", f'exec {sys.executable} "$@"\n')
    env = {  # TDDFA_BUILD_ARGS, TDDFA_CUDA_MPS, TDDFA_CUDA_POOL_MB unset: the defaults
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "TDDFA_MODELS": str(tmp_path / "models"),
        "PYTHONPATH": os.pathsep.join(sys.path),
        "TMPDIR": str(tmp_path),
    }
    script = tmp_path / "entrypoint.sh"
    script.write_text(entrypoint_script())
    return script, env, log


def test_entrypoint_serves_the_measured_deployment(sandbox):
    script, env, log = sandbox
    pipe = f"{env['TMPDIR']}/nvidia-mps"
    process = subprocess.Popen(["bash", str(script), "--log-verbose=0"], env=env)
    deadline = time.monotonic() + 30
    while "tritonserver" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "tritonserver was never started"
        assert process.poll() is None, "the entrypoint exited early"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 3  # the server's own exit status
    calls = log.read_text().splitlines()
    assert calls[0].startswith("tddfa build --flavour tensorrt --device gpu --instances 2 "
                               "--instance-count face_renderer=4")  # fmt: skip
    assert calls[1].startswith("mps -d")
    server = next(c for c in calls if c.startswith("tritonserver"))
    pool = 4096 << 20
    assert f"--cuda-memory-pool-byte-size=0:{pool}" in server
    assert f"--cuda-memory-pool-byte-size=1:{pool}" in server
    assert "--log-verbose=0" in server and f"pipe={pipe}" in server
    assert calls[-2:] == ["tritonserver got TERM", f"mps  quit pipe={pipe}"]


def run_until_served(script, env, log) -> list[str]:
    process = subprocess.Popen(["bash", str(script)], env=env)
    deadline = time.monotonic() + 30
    while "tritonserver" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    return log.read_text().splitlines()


def test_cpu_device_builds_onnxruntime_without_mps_or_pools(sandbox):
    script, env, log = sandbox
    env["TDDFA_DEVICE"] = "cpu"
    calls = run_until_served(script, env, log)
    assert (
        calls[0]
        == f"tddfa build --flavour onnxruntime --device cpu --out {env['TDDFA_MODELS']}/model_repository --models-dir {env['TDDFA_MODELS']}/cache"
    )
    assert not any(line.startswith("mps") for line in calls)
    assert "--cuda-memory-pool-byte-size" not in next(
        c for c in calls if c.startswith("tritonserver")
    )


def test_explicit_build_args_and_mps_settings_win(sandbox):
    script, env, log = sandbox
    env.update(TDDFA_BUILD_ARGS="--instances 3", TDDFA_CUDA_MPS="1",
               CUDA_MPS_PIPE_DIRECTORY=f"{env['TMPDIR']}/pipes")  # fmt: skip
    calls = run_until_served(script, env, log)
    assert calls[0].startswith("tddfa build --flavour tensorrt --device gpu --instances 3 --out")
    assert calls[1] == f"mps -d  pipe={env['TMPDIR']}/pipes"


def test_entrypoint_without_mps_when_switched_off(sandbox):
    script, env, log = sandbox
    env["TDDFA_CUDA_MPS"] = "0"
    calls = run_until_served(script, env, log)
    assert not any(line.startswith("mps") for line in calls)
