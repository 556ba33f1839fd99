"""docker/Dockerfile's entrypoint script, run with bash against stand-in commands.

The script is taken from the Dockerfile's heredoc and run with ``nvidia-smi``, ``tddfa``,
``tritonserver`` and ``nvidia-cuda-mps-control`` replaced by small recorders on PATH, so the
choices the Kubernetes overlays rely on (TDDFA_DEVICE, TDDFA_BUILD_ARGS, TDDFA_CUDA_MPS,
rebuild only when the fingerprint changes, arguments passed on to tritonserver) are checked
without Docker or a GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "docker" / "Dockerfile"
BASH = shutil.which("bash")

RECORDER = """#!/usr/bin/env bash
echo "$(basename "$0") $* | mps=${CUDA_MPS_PIPE_DIRECTORY:-}" >> "$CALLS"
"""
FAKE_TDDFA = (
    RECORDER
    + """
out=""
for arg in "$@"; do [[ "$prev" == --out ]] && out="$arg"; prev="$arg"; done
mkdir -p "$out" && echo '{}' > "$out/BUILD.json"
"""
)
FAKE_SMI = (
    RECORDER
    + """
[[ -n "${FAKE_GPU:-}" ]] || exit 9
echo "$FAKE_GPU"
"""
)


def entrypoint_script() -> str:
    text = DOCKERFILE.read_text()
    match = re.search(r"<<'EOF' /usr/local/bin/tddfa-entrypoint\n(.*?)\nEOF\n", text, re.S)
    assert match, "the entrypoint heredoc is missing from docker/Dockerfile"
    return match.group(1) + "\n"


@pytest.fixture()
def sandbox(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {
        "tddfa": FAKE_TDDFA,
        "nvidia-smi": FAKE_SMI,
        "tritonserver": RECORDER,
        "nvidia-cuda-mps-control": RECORDER,
    }.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "tddfa-entrypoint"
    script.write_text(entrypoint_script())
    calls = tmp_path / "calls.txt"

    def run(*args: str, **env: str) -> tuple[int, list[str], str]:
        calls.write_text("")
        environment = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "CALLS": str(calls),
            "TDDFA_MODELS": str(tmp_path / "models"),
            "HOME": str(tmp_path),
            **env,
        }
        done = subprocess.run(
            [BASH, str(script), *args], env=environment, capture_output=True, text=True, timeout=60
        )
        return done.returncode, calls.read_text().splitlines(), done.stderr

    run.models = tmp_path / "models"
    return run


pytestmark = pytest.mark.skipif(BASH is None, reason="bash not installed")


def test_gpu_build_once_then_serve_with_the_given_flags(sandbox) -> None:
    code, calls, err = sandbox("--exit-timeout-secs=60", FAKE_GPU="NVIDIA H200")
    assert code == 0, err
    build = next(c for c in calls if c.startswith("tddfa build"))
    assert "--flavour tensorrt --device gpu" in build
    assert f"--out {sandbox.models}/model_repository" in build
    assert calls[-1].startswith(
        f"tritonserver --model-repository={sandbox.models}/model_repository"
    )
    assert (
        "--http-port=8000 --grpc-port=8001 --metrics-port=8002 --exit-timeout-secs=60" in calls[-1]
    )
    assert "GPU=NVIDIA H200" in (sandbox.models / "model_repository" / "ENGINES").read_text()
    code, calls, _ = sandbox(FAKE_GPU="NVIDIA H200")  # same GPU: no rebuild
    assert code == 0 and not any(c.startswith("tddfa") for c in calls)
    code, calls, _ = sandbox(FAKE_GPU="NVIDIA H100 80GB HBM3")  # another GPU: rebuild
    assert any(c.startswith("tddfa build") for c in calls)


def test_build_args_are_passed_and_part_of_the_fingerprint(sandbox) -> None:
    args = "--instances 2 --instance-count face_renderer=4"
    code, calls, err = sandbox(FAKE_GPU="H200", TDDFA_BUILD_ARGS=args)
    assert code == 0, err
    assert any(c.startswith("tddfa build") and args in c for c in calls)
    code, calls, _ = sandbox(FAKE_GPU="H200", TDDFA_BUILD_ARGS=args)
    assert not any(c.startswith("tddfa") for c in calls)
    code, calls, _ = sandbox(FAKE_GPU="H200", TDDFA_BUILD_ARGS="--instances 1")
    assert any(c.startswith("tddfa build") and "--instances 1" in c for c in calls)


def test_cpu_needs_no_gpu(sandbox) -> None:
    code, calls, err = sandbox(TDDFA_DEVICE="cpu")
    assert code == 0, err
    assert not any(c.startswith("nvidia-smi") for c in calls)
    assert any(c.startswith("tddfa build --flavour onnxruntime --device cpu") for c in calls)
    assert calls[-1].startswith("tritonserver ")


def test_no_gpu_visible_fails_with_the_fix(sandbox) -> None:
    code, calls, err = sandbox()
    assert code != 0 and "TDDFA_DEVICE=cpu" in err
    assert not any(c.startswith("tritonserver") for c in calls)
    code, _, err = sandbox(TDDFA_DEVICE="tpu")
    assert code != 0 and "TDDFA_DEVICE must be gpu or cpu" in err


def test_mps_daemon_starts_before_tritonserver_with_the_same_pipes(sandbox, tmp_path) -> None:
    pipes = str(tmp_path / "mps")
    code, calls, err = sandbox(FAKE_GPU="H200", TDDFA_CUDA_MPS="1", CUDA_MPS_PIPE_DIRECTORY=pipes)
    assert code == 0, err
    daemon = calls.index(f"nvidia-cuda-mps-control -d | mps={pipes}")
    server = next(i for i, call in enumerate(calls) if call.startswith("tritonserver"))
    assert calls[server].endswith(f"mps={pipes}")
    assert daemon < server and os.path.isdir(pipes)
    code, calls, err = sandbox(TDDFA_DEVICE="cpu", TDDFA_CUDA_MPS="1")
    assert code != 0 and "needs TDDFA_DEVICE=gpu" in err
