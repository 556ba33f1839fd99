"""docker/Dockerfile's entrypoint script, run with bash against stand-in commands.

The script is taken from the Dockerfile's heredoc and run with ``nvidia-smi`` and ``tddfa``
replaced by small recorders on PATH, so the choices the Kubernetes overlays rely on
(TDDFA_DEVICE, TDDFA_BUILD_ARGS, TDDFA_CUDA_MPS, TDDFA_CUDA_POOL_MB, rebuild only when the
fingerprint changes, the measured deployment by default, container arguments passed on to
tritonserver, `tddfa serve` with its supervisor last) are checked without Docker or a GPU.
"""

from __future__ import annotations

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
[[ "$1" == build ]] || exit 0
out=""
for arg in "$@"; do [[ "$prev" == --out ]] && out="$arg"; prev="$arg"; done
[[ "$out" == /* ]] || { echo "fake tddfa build: no absolute --out" >&2; exit 64; }
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
        done = subprocess.run(  # in tmp_path: a stand-in's relative path lands there
            [BASH, str(script), *args],
            env=environment,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.returncode, calls.read_text().splitlines(), done.stderr

    run.models = tmp_path / "models"
    return run


pytestmark = pytest.mark.skipif(BASH is None, reason="bash not installed")


def serve_call(calls: list[str]) -> str:
    """The entrypoint's last act: `tddfa serve` (exec'd, with the supervisor)."""
    served = [c for c in calls if c.startswith("tddfa serve")]
    assert len(served) == 1 and calls[-1] == served[0], calls
    return served[0]


def test_gpu_build_once_then_serve_with_the_given_flags(sandbox) -> None:
    code, calls, err = sandbox(
        "--log-format=ISO8601", FAKE_GPU="NVIDIA H200", TDDFA_SERVE_ARGS="--exit-timeout 60"
    )
    assert code == 0, err
    build = next(c for c in calls if c.startswith("tddfa build"))
    # the measured deployment by default (benchmarks/RESULTS.md)
    assert build.startswith("tddfa build --flavour tensorrt --device gpu --instances 2 ")
    assert f"--out {sandbox.models}/model_repository" in build
    serve = serve_call(calls)
    assert "--tritonserver /opt/tritonserver/bin/tritonserver" in serve
    assert f"--model-repository {sandbox.models}/model_repository --host 0.0.0.0" in serve
    assert "--http-port 8000 --grpc-port 8001 --metrics-port 8002 --supervisor-port 8003" in serve
    assert "--cuda-memory-pool-mb 4096" in serve
    assert "--exit-timeout 60 -- --log-format=ISO8601" in serve  # serve's, then tritonserver's
    assert "GPU=NVIDIA H200" in (sandbox.models / "model_repository" / "ENGINES").read_text()
    code, calls, _ = sandbox(FAKE_GPU="NVIDIA H200")  # same GPU: no rebuild
    assert code == 0 and not any(c.startswith("tddfa build") for c in calls)
    assert " -- " not in serve_call(calls)  # no container arguments: no separator
    code, calls, _ = sandbox(FAKE_GPU="NVIDIA H100 80GB HBM3")  # another GPU: rebuild
    assert any(c.startswith("tddfa build") for c in calls)


def test_build_args_are_passed_and_part_of_the_fingerprint(sandbox) -> None:
    args = "--instances 3 --instance-count face_renderer=4"
    code, calls, err = sandbox(FAKE_GPU="H200", TDDFA_BUILD_ARGS=args)
    assert code == 0, err
    assert any(c.startswith("tddfa build") and args in c for c in calls)
    code, calls, _ = sandbox(FAKE_GPU="H200", TDDFA_BUILD_ARGS=args)
    assert not any(c.startswith("tddfa build") for c in calls)
    code, calls, _ = sandbox(FAKE_GPU="H200", TDDFA_BUILD_ARGS="--instances 1")
    assert any(c.startswith("tddfa build") and "--instances 1" in c for c in calls)


def test_cpu_needs_no_gpu_mps_or_pool(sandbox) -> None:
    code, calls, err = sandbox(TDDFA_DEVICE="cpu")
    assert code == 0, err
    assert not any(c.startswith("nvidia-smi") for c in calls)
    assert any(c.startswith("tddfa build --flavour onnxruntime --device cpu") for c in calls)
    serve = serve_call(calls)
    assert "--cuda-mps" not in serve and "--cuda-memory-pool-mb" not in serve


def test_no_gpu_visible_fails_with_the_fix(sandbox) -> None:
    code, calls, err = sandbox()
    assert code != 0 and "TDDFA_DEVICE=cpu" in err
    assert not any(c.startswith("tddfa serve") for c in calls)
    code, _, err = sandbox(TDDFA_DEVICE="tpu")
    assert code != 0 and "TDDFA_DEVICE must be gpu or cpu" in err


def test_cuda_mps_choice(sandbox) -> None:
    # auto: a private daemon (tddfa serve --cuda-mps) when a model instance is on the GPU
    code, calls, err = sandbox(FAKE_GPU="H200")
    assert code == 0, err
    assert "--cuda-mps" not in serve_call(calls)  # the fake build wrote no KIND_GPU config
    config = sandbox.models / "model_repository" / "face_detector" / "config.pbtxt"
    config.parent.mkdir(parents=True)
    config.write_text("instance_group [ { count: 1 kind: KIND_GPU } ]\n")
    code, calls, err = sandbox(FAKE_GPU="H200")
    assert code == 0 and "--cuda-mps" in serve_call(calls), err
    code, calls, _ = sandbox(FAKE_GPU="H200", TDDFA_CUDA_MPS="0")
    assert "--cuda-mps" not in serve_call(calls)
    code, calls, _ = sandbox(FAKE_GPU="H200", TDDFA_CUDA_MPS="1", TDDFA_CUDA_POOL_MB="512")
    assert "--cuda-mps" in serve_call(calls) and "--cuda-memory-pool-mb 512" in serve_call(calls)
    code, calls, err = sandbox(TDDFA_DEVICE="cpu", TDDFA_CUDA_MPS="1")
    assert code != 0 and "needs TDDFA_DEVICE=gpu" in err


def test_a_newer_image_rebuilds_the_repository(sandbox, tmp_path) -> None:
    """The image's sources (builder and models) are part of the fingerprint: a models volume
    built by an older image (another layout, other model.py files) is rebuilt, not served."""
    text = DOCKERFILE.read_text()
    copied = text.index("COPY model_repository ./model_repository")
    digest = text.index("RUN printf 'SOURCE=%s\\n'")
    assert copied < digest < text.index("tddfa-entrypoint"), "SOURCE digest after the sources"
    versions = tmp_path / "tddfa-versions"  # /etc/tddfa-versions of the image
    versions.write_text("TRITON_TAG=24.10\nTENSORRT_VERSION=10.5.0\nSOURCE=aaaa\n")
    code, calls, err = sandbox(FAKE_GPU="H200", TDDFA_VERSIONS=str(versions))
    assert code == 0 and any(c.startswith("tddfa build") for c in calls), err
    assert "SOURCE=aaaa" in (sandbox.models / "model_repository" / "ENGINES").read_text()
    code, calls, _ = sandbox(FAKE_GPU="H200", TDDFA_VERSIONS=str(versions))
    assert not any(c.startswith("tddfa build") for c in calls)
    versions.write_text(versions.read_text().replace("aaaa", "bbbb"))
    code, calls, _ = sandbox(FAKE_GPU="H200", TDDFA_VERSIONS=str(versions))
    assert any(c.startswith("tddfa build") for c in calls)
