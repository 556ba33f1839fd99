#!/usr/bin/env bash
# Pack what a bare GPU machine (CUDA 13, PyTorch, CuPy 14, numpy 2, Python 3.12, no network)
# needs to serve and test the GPU build; run HERE (CPU machine with the project's .venv).
# Output (git-ignored, under 64 MiB together with the working tree):
#   .carry/pytriton.tar.xz   tritonserver + Python backend + 3.12 stub + bundled libs of
#                            nvidia-pytriton 0.7.0; libicudata (29 MB, only used by libxml2
#                            for legacy encodings) replaced by an empty stub of the same soname
#   .carry/pylibs.tar.xz     tritonclient 2.51 (grpc, http, utils, perf_analyzer), python-rapidjson
#                            (cp312), PyOpenGL, tenacity, prometheus-client, threadpoolctl,
#                            pygltflib and its needs (the clients import the mesh export), and
#                            the HTTP client's gevent stack (tddfa serve's model control);
#                            geventhttpclient 2.0.10, the oldest with a cp312 wheel (tritonclient
#                            pins <=2.0.2, sdist-only on 3.12; the API it uses is the same)
#   .carry/shared.tar.xz     ../shared subset: the 3DDFA_V2 and 3DDFA assets (weights and the
#                            pieces of the BFM), test photos, emma720.mp4, reference
#   .carry/pynvc.tar.xz      PyNvVideoCodec 2.2.4 (NVDEC) from its wheel in .whl/, trimmed to
#                            the package (no ffmpeg source tarball, samples, duplicate .so
#                            copies): 27 MB wheel -> ~3 MB; skipped with a hint when the wheel
#                            is not there
#   .carry/gpu_expected.npz  CPU outputs for tests/gpu (tests/gpu/make_expected.py)
#   .carry/emma720x4.mp4     emma720.mp4 four times (1,200 frames, packets copied: 3 MB)
#   .gl/*.deb                GL/EGL loaders (glvnd) for the NVIDIA EGL driver
# Everything is just under the 64 MiB a call carries; a call takes what it needs by naming files
# (carry takes 8 paths): a call with the GPU suite leaves out emma720x4.mp4 (device_host_work.sh
# then plays emma720.mp4 four times a stream), one with only benchmarks gpu_expected.npz.
# The model repository is NOT carried: device_setup.sh builds it there (`tddfa build --device
# gpu`: ONNX export + BFM tables; the BFM alone was 21.6 MB of the old 59 MB carry).
# Usage: benchmarks/device_pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV_SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SHARED=${TDDFA_SHARED:-$ROOT/../shared}
export TDDFA_ASSET_DIR=${TDDFA_ASSET_DIR:-$SHARED/assets}
PYNVC_WHEEL=$(ls .whl/pynvvideocodec-2.2.4-cp312-*.whl 2>/dev/null | head -1 || true)
PY312=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
       --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
mkdir -p .carry .gl /tmp/tddfa_pack
EXCLUDE=$(git rev-parse --git-common-dir)/info/exclude  # a worktree's .git is a file
mkdir -p "$(dirname "$EXCLUDE")"
for line in /.carry/ /.gl/ /.whl/; do
  grep -qx "$line" "$EXCLUDE" 2>/dev/null || echo "$line" >> "$EXCLUDE"
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
    tritonclient==2.51.0 python-rapidjson==1.25 PyOpenGL==3.1.10 \
    tenacity prometheus-client threadpoolctl \
    pygltflib==1.16.5 dataclasses-json==0.6.7 marshmallow==3.26.2 typing-inspect==0.9.0 \
    mypy-extensions==1.2.0 Deprecated==1.3.1 wrapt==2.5.2 \
    geventhttpclient==2.0.10 gevent==26.9.0 greenlet==3.5.6 zope.event==6.2 zope.interface==8.7 six
    # the serve, batch, CPU-thread and mesh-export helpers; the HTTP client (brotli, which only
    # its user agent imports, is left out)
for wheel in "$STAGE"/whl/*.whl; do unzip -qo "$wheel" -d "$STAGE/py"; done
mv "$STAGE"/py/tritonclient-2.51.0.data/data/bin/perf_analyzer "$STAGE/py/bin/"
mv "$STAGE"/py/tritonclient-2.51.0.data/purelib/tritonclient "$STAGE/py/"
rm -rf "$STAGE"/py/tritonclient-2.51.0.data "$STAGE"/py/tritonclient/http/aio \
    "$STAGE"/py/gevent/tests "$STAGE"/py/gevent/testing "$STAGE"/py/zope/interface/tests \
    "$STAGE"/py/zope/interface/common/tests
find "$STAGE/py" \( -name '*.c' -o -name '*.h' -o -name '*.pyx' -o -name '*.pxd' \) -delete
find "$STAGE/py" -name __pycache__ -prune -exec rm -rf {} +
chmod +x "$STAGE/py/bin/perf_analyzer"
tar -C "$STAGE/py" -cJf .carry/pylibs.tar.xz .

# -- PyNvVideoCodec (NVDEC), trimmed from its wheel ---------------------------------------------
if [ -n "$PYNVC_WHEEL" ]; then
  mkdir -p "$STAGE/nvc"
  unzip -qo "$PYNVC_WHEEL" 'PyNvVideoCodec/*' 'pynvvideocodec./*' 'pynvvideocodec-*.dist-info/*' -d "$STAGE/nvc"
  # the loader needs only the SONAME copies (libavformat.so.63, libavutil.so.61)
  rm -f "$STAGE"/nvc/PyNvVideoCodec/libavformat.so "$STAGE"/nvc/PyNvVideoCodec/libavformat.so.*.*.* \
        "$STAGE"/nvc/PyNvVideoCodec/libavutil.so "$STAGE"/nvc/PyNvVideoCodec/libavutil.so.*.*.*
  tar -C "$STAGE/nvc" -cJf .carry/pynvc.tar.xz .
else
  echo "no .whl/pynvvideocodec-2.2.4-cp312-*.whl: NVDEC tests will skip. Get it with:" >&2
  echo "  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\" >&2
  echo "      --platform manylinux_2_28_x86_64 -d .whl PyNvVideoCodec==2.2.4" >&2
fi

# -- assets (the repository is built from them on the device), reference, CPU outputs ----------
tar -C "$SHARED" -cJf .carry/shared.tar.xz assets/3ddfa_v2 assets/3ddfa_v1 assets/images \
    assets/ffmpeg_gpu_demo/color.1024x1024.jpg assets/video/emma720.mp4 reference
# the sample clip four times (1,200 frames, packets copied): host work per frame on a long clip
(cd benchmarks && ../.venv/bin/python -c "import _common, pathlib; _common.repeated_clip(
    pathlib.Path('$SHARED/assets/video/emma720.mp4'), 4, pathlib.Path('../.carry/emma720x4.mp4'))")
# the CPU outputs tests/gpu compares with, always from this tree's code (a CPU build in
# build/model_repository, made once)
test -f build/model_repository/BUILD.json || .venv/bin/tddfa build --out build/model_repository
.venv/bin/python tests/gpu/make_expected.py --repository build/model_repository \
    --out build/gpu_expected.npz
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
