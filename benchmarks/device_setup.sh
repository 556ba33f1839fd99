# Source on the bare GPU machine, in the repository root, with `.carry` and `.gl` carried
# (benchmarks/device_pack.sh made them):   source benchmarks/device_setup.sh
# Unpacks tritonserver, the client packages (and PyNvVideoCodec when packed), installs the GL
# loaders, makes the project importable (a .pth in the machine's site-packages, also seen by
# the Python-backend stubs, which ignore PYTHONPATH), BUILDS the GPU model repository there
# (`tddfa build --device gpu $TDDFA_BUILD_ARGS` into build/gpu_repository, unless one is
# there: ONNX export + BFM tables from the carried assets, with the machine's PyTorch, ONNX,
# onnxruntime and SciPy) and exports what tests/gpu and benchmarks/gpu_bench.py read. Uses the
# machine's own PyTorch, CuPy and numpy 2: the GPU build exchanges every tensor with Triton
# through DLPack (tddfa_triton.adapter).
set -e
T=/tmp/tddfa
mkdir -p "$T/site" "$T/pkgs"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
VENDOR=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$VENDOR" ] || VENDOR=$(ls /usr/share/glvnd/egl_vendor.d/*nvidia*.json 2>/dev/null | head -1)
[ -n "$VENDOR" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$VENDOR
tar -xJf .carry/pytriton.tar.xz -C "$T/site"
tar -xJf .carry/pylibs.tar.xz -C "$T/site"
[ -f .carry/pynvc.tar.xz ] && tar -xJf .carry/pynvc.tar.xz -C "$T/site"
SHARED_DIR=$(cd .. && pwd)/shared
mkdir -p "$SHARED_DIR"
tar -xJf .carry/shared.tar.xz -C "$SHARED_DIR"
export TDDFA_ASSET_DIR=$SHARED_DIR/assets
REPO=$PWD/build/gpu_repository
# the editable install's package map (pyproject [tool.setuptools.package-dir])
ln -sfn "$PWD/python_backends/tddfa" "$T/pkgs/tddfa"
ln -sfn "$PWD/python_backends/tddfa_triton" "$T/pkgs/tddfa_triton"
ln -sfn "$PWD/tools" "$T/pkgs/tddfa_tools"
ln -sfn "$PWD/clients" "$T/pkgs/tddfa_clients"
SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n%s\n' "$T/pkgs" "$T/site" > "$SITE/tddfa_device.pth"
mkdir -p build
if [ ! -f "$REPO/tddfa/config.pbtxt" ]; then
  echo "building $REPO on this machine (tddfa build --device gpu ${TDDFA_BUILD_ARGS:-})"
  python3 -m tddfa_tools.cli build --device gpu --out "$REPO" --models-dir build/models \
      ${TDDFA_BUILD_ARGS:-} > build/tddfa_build.log 2>&1 \
    || { tail -30 build/tddfa_build.log; echo "tddfa build failed: build/tddfa_build.log" >&2; }
fi
export TDDFA_GPU_REPOSITORY=$REPO
export TDDFA_GPU_EXPECTED=$PWD/.carry/gpu_expected.npz
export PYTHONUNBUFFERED=1
set +e
