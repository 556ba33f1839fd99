"""docker/Dockerfile's entrypoint script, run with bash against stand-in commands.

The script is taken from the Dockerfile's heredoc and run with ``nvidia-smi``, ``tddfa``,
``tritonserver``, ``nvidia-cuda-mps-control`` and ``python3`` replaced by small recorders on
PATH, so what the image and the Kubernetes overlays rely on is checked without Docker or a
GPU: the flavour per TDDFA_DEVICE (tensorrt on the GPU, onnxruntime on the CPU), the measured
deployment by default, TDDFA_BUILD_ARGS, a rebuild only when the fingerprint (image versions
and sources, GPU, build flags) changes, the CUDA memory pool per visible GPU, the private MPS
daemon (TDDFA_CUDA_MPS) started before tritonserver and quit after it, SIGTERM forwarded and
the server's exit status kept, arguments passed on to tritonserver.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "docker" / "Dockerfile"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash not installed")

RECORDER = 'echo "$(basename "$0") $* | mps=${CUDA_MPS_PIPE_DIRECTORY:-}" >> "$CALLS"\n'
STAND_INS = {
    # the build: a repository whose renderer is KIND_GPU on GPU builds (MPS "auto" looks)
    "tddfa": RECORDER
    + """
out="" device=""
for arg in "$@"; do
    [[ "$prev" == --out ]] && out="$arg"; [[ "$prev" == --device ]] && device="$arg"; prev="$arg"
done
mkdir -p "$out/face_renderer" && echo '{}' > "$out/BUILD.json"
kind=KIND_CPU; [[ "$device" == gpu ]] && kind=KIND_GPU
echo "instance_group [ { kind: $kind } ]" > "$out/face_renderer/config.pbtxt"
""",
    # FAKE_GPU unset: no GPU (nvidia-smi fails); FAKE_GPUS: how many `-L` lists
    "nvidia-smi": RECORDER
    + """
[[ -n "${FAKE_GPU:-}" ]] || exit 9
case "$*" in
    *-L*) for i in $(seq 0 $((${FAKE_GPUS:-1} - 1))); do echo "GPU $i: $FAKE_GPU (UUID: GPU-$i)"; done ;;
    *) echo "$FAKE_GPU" ;;
esac
""",
    "nvidia-cuda-mps-control": 'echo "nvidia-cuda-mps-control $* $(cat 2>/dev/null) | '
    'mps=${CUDA_MPS_PIPE_DIRECTORY:-}" >> "$CALLS"\n',
    # trap before announcing itself (the test signals once it sees the announcement)
    "tritonserver": 'trap \'echo "tritonserver got TERM" >> "$CALLS"; exit 3\' TERM\n'
    + RECORDER
    + '[[ -z "${FAKE_SERVER_WAITS:-}" ]] || while true; do sleep 0.1; done\n',
    "python3": f'exec {sys.executable} "$@"\n',  # the pool flags come from tddfa_tools.serve
}


def entrypoint_script() -> str:
    text = DOCKERFILE.read_text()
    match = re.search(
        r"COPY --chmod=755 <<'EOF' /usr/local/bin/tddfa-entrypoint\n(.*?)\nEOF\n", text, re.S
    )
    assert match, "the entrypoint heredoc is missing from docker/Dockerfile"
    return match.group(1) + "\n"


@dataclasses.dataclass
class Run:
    code: int
    calls: list[str]
    stderr: str

    def first(self, prefix: str) -> str:
        return next(c for c in self.calls if c.startswith(prefix))

    def ran(self, prefix: str) -> bool:
        return any(c.startswith(prefix) for c in self.calls)


class Sandbox:
    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        for name, body in STAND_INS.items():
            (self.bin / name).write_text("#!/usr/bin/env bash\n" + body)
            (self.bin / name).chmod(0o755)
        self.script = root / "tddfa-entrypoint"
        self.script.write_text(entrypoint_script())
        self.calls = root / "calls.txt"
        self.models = root / "models"
        self.versions = root / "tddfa-versions"  # /etc/tddfa-versions of the image
        self.versions.write_text("TRITON_TAG=24.10\nTENSORRT_VERSION=10.5.0\nSOURCE=aaaa\n")

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "CALLS": str(self.calls),
            "TDDFA_MODELS": str(self.models),
            "TDDFA_VERSIONS": str(self.versions),
            "HOME": str(self.root),
            "TMPDIR": str(self.root),
            "PYTHONPATH": os.pathsep.join(sys.path),
            **env,
        }

    def run(self, *args: str, **env: str) -> Run:
        """The entrypoint until it exits (the stand-in server returns at once)."""
        self.calls.write_text("")
        done = subprocess.run(
            [BASH, str(self.script), *args],
            env=self.environment(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Run(done.returncode, self.calls.read_text().splitlines(), done.stderr)

    def serve_then_term(self, *args: str, **env: str) -> Run:
        """The entrypoint with a server that runs until SIGTERM, which the test sends to the
        entrypoint once the server has started."""
        self.calls.write_text("")
        process = subprocess.Popen(
            [BASH, str(self.script), *args],
            env=self.environment({"FAKE_SERVER_WAITS": "1", **env}),
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while "tritonserver" not in self.calls.read_text():
            assert time.monotonic() < deadline, "tritonserver was never started"
            assert process.poll() is None, f"the entrypoint exited early: {process.stderr.read()}"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        return Run(code, self.calls.read_text().splitlines(), process.stderr.read())


@pytest.fixture()
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def test_gpu_serves_the_measured_deployment_and_forwards_sigterm(sandbox) -> None:
    pipes = f"{sandbox.root}/nvidia-mps"  # the default pipe folder under TMPDIR
    run = sandbox.serve_then_term("--log-verbose=0", FAKE_GPU="NVIDIA H200", FAKE_GPUS="2")
    assert run.code == 3, run.stderr  # the server's own exit status
    build = run.first("tddfa build")
    assert build.startswith(
        "tddfa build --flavour tensorrt --device gpu --instances 2 "
        f"--instance-count face_renderer=4 --out {sandbox.models}/model_repository "
        f"--models-dir {sandbox.models}/cache"
    )
    daemon = run.calls.index(f"nvidia-cuda-mps-control -d  | mps={pipes}")
    server = run.calls.index(run.first("tritonserver --model-repository"))
    assert run.calls.index(build) < daemon < server and os.path.isdir(pipes)
    pool = 4096 << 20
    for gpu in (0, 1):  # a CUDA memory pool on every visible GPU
        assert f"--cuda-memory-pool-byte-size={gpu}:{pool}" in run.calls[server]
    assert "--http-port=8000 --grpc-port=8001 --metrics-port=8002" in run.calls[server]
    assert "--log-verbose=0" in run.calls[server] and run.calls[server].endswith(f"mps={pipes}")
    assert run.calls[-2:] == [
        "tritonserver got TERM",
        f"nvidia-cuda-mps-control  quit | mps={pipes}",
    ]


def test_rebuild_only_when_the_fingerprint_changes(sandbox) -> None:
    run = sandbox.run(FAKE_GPU="NVIDIA H200")
    assert run.code == 0, run.stderr
    assert run.ran("tddfa build")
    fingerprint = (sandbox.models / "model_repository" / "ENGINES").read_text()
    assert "GPU=NVIDIA H200" in fingerprint and "SOURCE=aaaa" in fingerprint
    run = sandbox.run(FAKE_GPU="NVIDIA H200")  # same GPU, image and flags: served as built
    assert run.code == 0 and not run.ran("tddfa") and run.ran("tritonserver")
    run = sandbox.run(FAKE_GPU="NVIDIA H100 80GB HBM3")  # another GPU: new engines
    assert run.ran("tddfa build")
    sandbox.versions.write_text(sandbox.versions.read_text().replace("aaaa", "bbbb"))
    run = sandbox.run(FAKE_GPU="NVIDIA H100 80GB HBM3")  # a newer image (builder, models)
    assert run.ran("tddfa build")


def test_build_args_are_passed_and_part_of_the_fingerprint(sandbox) -> None:
    args = "--instances 3 --max-faces 4"
    run = sandbox.run(FAKE_GPU="H200", TDDFA_BUILD_ARGS=args)
    assert run.code == 0, run.stderr
    assert run.first("tddfa build").startswith(
        f"tddfa build --flavour tensorrt --device gpu {args} --out"
    )
    assert not sandbox.run(FAKE_GPU="H200", TDDFA_BUILD_ARGS=args).ran("tddfa")
    run = sandbox.run(FAKE_GPU="H200", TDDFA_BUILD_ARGS="--instances 1")
    assert "--instances 1" in run.first("tddfa build")
    run = sandbox.run(FAKE_GPU="H200", TDDFA_BUILD_ARGS="")  # set but empty: no extra flags
    assert run.first("tddfa build").startswith("tddfa build --flavour tensorrt --device gpu --out")


def test_cpu_builds_onnxruntime_without_a_gpu_mps_or_pools(sandbox) -> None:
    run = sandbox.serve_then_term(TDDFA_DEVICE="cpu")
    assert run.code == 3, run.stderr
    assert not run.ran("nvidia-smi") and not run.ran("nvidia-cuda-mps-control")
    assert run.first("tddfa build") == (
        f"tddfa build --flavour onnxruntime --device cpu --out {sandbox.models}/model_repository "
        f"--models-dir {sandbox.models}/cache | mps="
    )
    assert "--cuda-memory-pool-byte-size" not in run.first("tritonserver --model-repository")


def test_no_gpu_or_a_bad_device_fails_with_the_fix(sandbox) -> None:
    run = sandbox.run()  # nvidia-smi finds no GPU
    assert run.code != 0 and "TDDFA_DEVICE=cpu" in run.stderr
    assert not run.ran("tritonserver") and not run.ran("tddfa")
    run = sandbox.run(TDDFA_DEVICE="tpu")
    assert run.code != 0 and "TDDFA_DEVICE must be gpu or cpu" in run.stderr


def test_mps_settings(sandbox) -> None:
    pipes = str(sandbox.root / "pipes")
    run = sandbox.run(FAKE_GPU="H200", TDDFA_CUDA_MPS="1", CUDA_MPS_PIPE_DIRECTORY=pipes)
    assert run.code == 0, run.stderr
    assert run.calls.index(f"nvidia-cuda-mps-control -d  | mps={pipes}") < run.calls.index(
        run.first("tritonserver")
    )
    assert run.first("tritonserver").endswith(f"mps={pipes}")  # the server finds the daemon
    assert not sandbox.run(FAKE_GPU="H200", TDDFA_CUDA_MPS="0").ran("nvidia-cuda-mps-control")
    run = sandbox.run(TDDFA_DEVICE="cpu", TDDFA_CUDA_MPS="1")
    assert run.code != 0 and "needs TDDFA_DEVICE=gpu" in run.stderr
