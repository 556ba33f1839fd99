#!/usr/bin/env bash
# The two-GPU measurement (docs/multi_gpu.md) on a GPU machine, after `source
# benchmarks/device_setup.sh` (TDDFA_BUILD_ARGS set before it chooses the build):
#   (a) perf_analyzer with one server per GPU (gpu_bench --layout per-gpu, CUDA MPS each);
#   (c) video copies, NVDEC + CUDA shared memory, no encode, detect and track modes: first
#       against the server of GPU 0 alone, then spread over both GPUs' servers.
# Usage: benchmarks/device_multi_gpu.sh OUT_DIR
set -u
out=${1:?output folder}
mkdir -p "$out"
repo=build/gpu_repository
timeout 240 python3 benchmarks/gpu_bench.py --parts a --mps --layout per-gpu \
    --concurrency 2 128 256 --interval-ms 2000 --perf-timeout 90 --out "$out/a" \
    > "$out/a.log" 2>&1
tail -n 12 "$out/a.log"
serve() {  # GPU, port offset
    python3 -m tddfa_tools.cli serve --model-repository "$repo" --cuda-mps \
        --cuda-memory-pool-mb 4096 --gpus "$1" --http-port $((8000 + $2)) \
        --grpc-port $((8001 + $2)) --metrics-port $((8002 + $2)) \
        --supervisor-port $((8003 + $2)) > "$out/serve_gpu$1.log" 2>&1 &
}
serve 0 0
serve 1 10
for port in 8000 8010; do
    for _ in $(seq 150); do
        python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/v2/models/tddfa_track/ready', timeout=2)" \
            2>/dev/null && break
        sleep 2
    done
done
video() {  # label, extra arguments
    timeout 150 python3 benchmarks/bench_video.py --decoder nvdec --shared-memory cuda \
        --no-encode --no-results "${@:2}" > "$out/video_$1.log" 2>&1
    echo "== $1"; tail -n 3 "$out/video_$1.log"
}
for mode in detect track; do
    video "1gpu_$mode" --url localhost:8001 --streams 16 --mode "$mode"
    video "2gpu_$mode" --url localhost:8001 --url localhost:8011 --client-gpus 0,1 \
        --streams 32 --processes 2 --mode "$mode"
done
pkill -TERM -f "tddfa_tools.cli serve" 2>/dev/null
wait
