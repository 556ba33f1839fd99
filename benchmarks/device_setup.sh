# Source on the bare GPU machine, in the repository root, with `.carry` and `.gl` carried
# (benchmarks/device_pack.sh made them):   source benchmarks/device_setup.sh
# Unpacks tritonserver, the client packages and the GPU model repository, installs the GL
# loaders, makes the project importable (a .pth in the machine's site-packages, also seen by
# the Python-backend stubs, which ignore PYTHONPATH) and exports what tests/gpu and
# benchmarks/gpu_bench.py read. Uses the machine's own PyTorch, CuPy and numpy 2: the
# GPU build exchanges every tensor with Triton through DLPack (tddfa_triton.adapter).
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
mkdir -p build
tar -xJf .carry/gpu_repo.tar.xz -C build
SHARED_DIR=$(cd .. && pwd)/shared
mkdir -p "$SHARED_DIR"
tar -xJf .carry/shared.tar.xz -C "$SHARED_DIR"
export TDDFA_ASSET_DIR=$SHARED_DIR/assets
REPO=$PWD/build/gpu_repository
cp "$TDDFA_ASSET_DIR/3ddfa_v2/FaceBoxesProd.pth" "$REPO/face_detector/1/"
cp "$TDDFA_ASSET_DIR/3ddfa_v2/mb05_120x120.pth" "$REPO/face_regressor/1/"
ln -f "$REPO/landmark_to_vertex/1/bfm.npz" "$REPO/bfm_decoder/1/bfm.npz"
# the editable install's package map (pyproject [tool.setuptools.package-dir])
ln -sfn "$PWD/python_backends/tddfa" "$T/pkgs/tddfa"
ln -sfn "$PWD/python_backends/tddfa_triton" "$T/pkgs/tddfa_triton"
ln -sfn "$PWD/tools" "$T/pkgs/tddfa_tools"
ln -sfn "$PWD/clients" "$T/pkgs/tddfa_clients"
SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n%s\n' "$T/pkgs" "$T/site" > "$SITE/tddfa_device.pth"
export TDDFA_GPU_REPOSITORY=$REPO
export TDDFA_GPU_EXPECTED=$PWD/.carry/gpu_expected.npz
export PYTHONUNBUFFERED=1
set +e
