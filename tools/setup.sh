#!/usr/bin/env bash
# Set up a Debian/Ubuntu machine for this project; safe to run again (idempotent).
#
#   1. system packages (apt, as root or through sudo): Mesa EGL for the headless renderer,
#      libb64 for perf_analyzer, python3 + venv + libpython for the Triton Python-backend stub;
#   2. .venv at the repository root: torch (CPU wheel), the project (editable, extras torch+dev),
#      the nvidia-pytriton wheel (only for its tritonserver binary, so --no-deps) and the CUDA 12
#      runtime that perf_analyzer links against;
#   3. the Khronos glTF validator (npm, into .venv/node) that the --mesh tests run, where npm is.
#
# Environment: PYTHON (interpreter for the venv, default python3, >= 3.10),
#              TDDFA_SETUP_FORCE=1 (reinstall the Python packages even if nothing changed).
# Video decoding needs no system FFmpeg: the PyAV wheels bundle it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
PYTRITON_VERSION="0.7.0"
CUDA_RUNTIME="nvidia-cuda-runtime-cu12>=12.1,<13"
STAMP="$VENV/.tddfa-setup"

log() { printf '[setup] %s\n' "$*" >&2; }
run() { printf '+ %s\n' "$*" >&2; "$@"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# ---- 1. system packages ----------------------------------------------------------------------
APT_PACKAGES=(
    make                                      # the Makefile targets (README commands)
    libegl1 libegl-mesa0 libgl1-mesa-dri      # EGL + Mesa llvmpipe: headless OpenGL on CPU
    libgl1 libopengl0                         # GL entry points PyOpenGL loads next to EGL
    libb64-0d                                 # perf_analyzer (tritonclient wheel)
    libjemalloc2                              # tritonserver's malloc: flat RSS (tools/serve/allocator.py)
)
if ! command -v "$PYTHON" >/dev/null 2>&1 || [[ "$(command -v "$PYTHON")" == /usr/bin/* ]]; then
    # The distribution's Python: venv support, and the shared libpython the stub links against.
    APT_PACKAGES+=(python3 python3-venv)
    if command -v "$PYTHON" >/dev/null 2>&1; then
        APT_PACKAGES+=("libpython$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')")
    fi
fi

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${APT_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
    done
else
    log "no dpkg: not a Debian-like system; install the equivalents of: ${APT_PACKAGES[*]}"
fi

if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "missing system packages (${missing[*]}) and neither root nor sudo: install them, then rerun"
    fi
    log "installing system packages: ${missing[*]}"
    run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "system packages present: ${APT_PACKAGES[*]}"
fi

# ---- 2. Python environment -------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: set PYTHON=/path/to/python3.10+"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); Python >= 3.10 is required (set PYTHON=...)"

if [[ -x "$VENV/bin/python" ]]; then
    log "using existing $VENV ($("$VENV/bin/python" -V))"
else
    log "creating $VENV with $("$PYTHON" -V)"
    run "$PYTHON" -m venv "$VENV"
fi

# Skip the pip steps when nothing they depend on changed since the last successful run.
fingerprint="$(cat "$REPO/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [[ "${TDDFA_SETUP_FORCE:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$fingerprint" ]] \
    && "$VENV/bin/python" -c 'import tddfa, tddfa_tools, tddfa_clients' 2>/dev/null; then
    log "Python packages up to date (TDDFA_SETUP_FORCE=1 reinstalls them)"
else
    PIP=("$VENV/bin/python" -m pip install --quiet)
    # torch first and on its own: pip then picks the CPU build where the index offers one,
    # instead of letting the project's extras pull a CUDA build and its GPU libraries.
    run "${PIP[@]}" "torch==$TORCH_VERSION"
    run "${PIP[@]}" -e "$REPO[torch,dev]"
    # Only the tritonserver binary of this wheel is used: its Python dependencies are not needed.
    run "${PIP[@]}" --no-deps "nvidia-pytriton==$PYTRITON_VERSION"
    run "${PIP[@]}" "$CUDA_RUNTIME"
    echo "$fingerprint" >"$STAMP"
fi

# ---- 3. the Khronos glTF validator (tests of the --mesh files) -----------------------------
# npm package, pinned; installed into the git-ignored .venv/node. Without npm the tests that
# need it are skipped with the reason.
GLTF_VALIDATOR="gltf-validator@2.0.0-dev.3.10"
if [[ -f "$VENV/node/node_modules/gltf-validator/package.json" ]] \
    && grep -q '"version": "2.0.0-dev.3.10"' "$VENV/node/node_modules/gltf-validator/package.json"; then
    log "glTF validator present ($GLTF_VALIDATOR)"
elif command -v npm >/dev/null 2>&1; then
    run npm install --silent --no-audit --no-fund --prefix "$VENV/node" "$GLTF_VALIDATOR" \
        || log "could not install $GLTF_VALIDATOR: the glTF validation tests will be skipped"
else
    log "npm not found: the glTF validation tests will be skipped (apt-get install npm)"
fi

"$VENV/bin/python" - <<'EOF' || die "the environment is incomplete (see above): rerun with TDDFA_SETUP_FORCE=1"
import sys

import numpy
from tddfa_tools.serve.embedded import prepare_backends, tritonserver_dist

assert int(numpy.__version__.split(".")[0]) < 2, f"numpy {numpy.__version__}: the Triton Python backend needs numpy < 2"
backends = prepare_backends(tritonserver_dist())
print(f"[setup] numpy {numpy.__version__}; Triton Python backend in {backends}", file=sys.stderr)
EOF
log "done: $VENV/bin/tddfa --help"
