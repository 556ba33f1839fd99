#!/usr/bin/env bash
# Pack what a bare GPU machine (CUDA 13, PyTorch, CuPy 14, numpy 2, Python 3.12, no network)
# needs to serve and test the GPU build; run HERE (CPU machine with the project's .venv).
# Output (git-ignored, under 64 MiB together with the working tree):
#   .carry/pytriton.tar.xz   tritonserver + Python backend + 3.12 stub + bundled libs of
#                            nvidia-pytriton 0.7.0; libicudata (29 MB, only used by libxml2
#                            for legacy encodings) replaced by an empty stub of the same soname
#   .carry/pylibs.tar.xz     tritonclient 2.51 (grpc, utils, perf_analyzer), python-rapidjson
#                            (cp312), PyOpenGL
#   .carry/gpu_repo.tar.xz   build/gpu_repository without ONNX files, .pth weights (in the
#                            assets) and the second bfm.npz copy (hard-linked on the device)
#   .carry/shared.tar.xz     ../shared subset: the two .pth, test photos, emma720.mp4, reference
#   .carry/gpu_expected.npz  CPU outputs for tests/gpu (tests/gpu/make_expected.py)
#   .gl/*.deb                GL/EGL loaders (glvnd) for the NVIDIA EGL driver
# Usage: benchmarks/device_pack.sh   (after `tddfa build --device gpu --out build/gpu_repository`)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV_SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SHARED=${TDDFA_SHARED:-$ROOT/../shared}
REPO=${GPU_REPOSITORY:-build/gpu_repository}
PY312=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
       --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
mkdir -p .carry .gl /tmp/tddfa_pack
for line in /.carry/ /.gl/ /.whl/; do
  grep -qx "$line" .git/info/exclude 2>/dev/null || echo "$line" >> .git/info/exclude
done
STAGE=$(mktemp -d /tmp/tddfa_pack/stage.XXXX)
trap 'rm -rf "$STAGE"' EXIT

# -- tritonserver (trimmed pytriton) -------------------------------------------------------
rm -f .carry/*
mkdir -p "$STAGE/pt"
( cd "$VENV_SITE" && cp -r --parents pytriton/__init__.py pytriton/tritonserver/bin \
    pytriton/tritonserver/backends pytriton/tritonserver/caches \
    pytriton/tritonserver/python_backend_stubs/3.12 nvidia_pytriton-0.7.0.dist-info \
    nvidia_pytriton.libs "$STAGE/pt/" )
find "$STAGE/pt" -name __pycache__ -prune -exec rm -rf {} +
rm -f "$STAGE"/pt/nvidia_pytriton.libs/libpython3*
ICU=$(basename "$STAGE"/pt/nvidia_pytriton.libs/libicudata-*.so.*)
SYMBOL=$(nm -D --defined-only "$VENV_SITE/nvidia_pytriton.libs/$ICU" | awk '/_dat$/ {print $3}')
echo "const char ${SYMBOL}[32] = {0};" > "$STAGE/icu.c"
gcc -shared -fPIC -Wl,-soname,"$ICU" -o "$STAGE/pt/nvidia_pytriton.libs/$ICU" "$STAGE/icu.c"
( cd "$STAGE/pt/nvidia_pytriton.libs" && ln -sf libb64-*.so.0d libb64.so.0d \
    && ln -sf libcudart-*.so.12* libcudart.so.12 )  # perf_analyzer's sonames
tar -C "$STAGE/pt" -cJf .carry/pytriton.tar.xz .

# -- client-side Python packages ----------------------------------------------------------
mkdir -p "$STAGE/py/bin" "$STAGE/whl"
python3 -m pip download -q --no-deps "${PY312[@]}" -d "$STAGE/whl" \
    tritonclient==2.51.0 python-rapidjson==1.25 PyOpenGL==3.1.10
for wheel in "$STAGE"/whl/*.whl; do unzip -qo "$wheel" -d "$STAGE/py"; done
mv "$STAGE"/py/tritonclient-2.51.0.data/data/bin/perf_analyzer "$STAGE/py/bin/"
mv "$STAGE"/py/tritonclient-2.51.0.data/purelib/tritonclient "$STAGE/py/"
rm -rf "$STAGE"/py/tritonclient-2.51.0.data "$STAGE"/py/tritonclient/http/aio
find "$STAGE/py" -name __pycache__ -prune -exec rm -rf {} +
chmod +x "$STAGE/py/bin/perf_analyzer"
tar -C "$STAGE/py" -cJf .carry/pylibs.tar.xz .

# -- GPU model repository --------------------------------------------------------------------
test -f "$REPO/tddfa/config.pbtxt" || { echo "build $REPO first: tddfa build --device gpu --out $REPO" >&2; exit 1; }
tar -C "$(dirname "$REPO")" --exclude='*.onnx' --exclude='*.pth' --exclude=__pycache__ \
    --exclude="$(basename "$REPO")/bfm_decoder/1/bfm.npz" -cJf .carry/gpu_repo.tar.xz "$(basename "$REPO")"

# -- assets, reference, CPU outputs ------------------------------------------------------------
tar -C "$SHARED" -cJf .carry/shared.tar.xz assets/3ddfa_v2/FaceBoxesProd.pth \
    assets/3ddfa_v2/mb05_120x120.pth assets/images assets/video/emma720.mp4 reference
test -f build/gpu_expected.npz || (cd tests/gpu && ../../.venv/bin/python make_expected.py --out ../../build/gpu_expected.npz)
cp build/gpu_expected.npz .carry/gpu_expected.npz

# -- GL loaders (the device README's recipe) ---------------------------------------------------
if ! ls .gl/*.deb >/dev/null 2>&1; then
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  mkdir -p /tmp/amd64/partial
  apt-get $o update -qq
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -ch .carry/* .gl/* | tail -1
git ls-files -z | du -ch --files0-from=- | tail -1
