#!/usr/bin/env bash
# Host work per frame on a GPU machine: 16 NVDEC streams end to end (decode -> server ->
# RENDERED in CUDA shared memory, no encode) in detect and track modes with the CPU ms per
# frame of every kind of process, and the client-like load (RENDERED only) and perf_analyzer
# (every output), with this tree's code; with BASELINE (another checkout of the project, e.g.
# the previous release), the same first with that code, in the same lease
# (HOST_WORK_BASE_SERVER=0: only the baseline's client, against this tree's server;
# HOST_WORK_BASE_CLIENT=this: this tree's stream client against the baseline's server, so
# that only the server differs).
# Run after `source benchmarks/device_setup.sh` (TDDFA_BUILD_ARGS chooses the build). The
# baseline's server serves a repository built by its own code with the same arguments (its
# model.py files import its own library). Every step's output is appended to OUT_DIR/all.log
# (few files: the device returns at most eight); the client profiles go beside it. Usage:
#   bash benchmarks/device_host_work.sh OUT_DIR [BASELINE_ROOT]
set -u
results=${1:?output folder}
base=${2:-}
here=$PWD
repo=$here/build/gpu_repository
clip=$here/.carry/emma720x4.mp4  # emma720.mp4 four times (packets copied)
plays=()
if [ ! -f "$clip" ]; then  # not carried (a call short of room): the clip played four times
    clip=$TDDFA_ASSET_DIR/video/emma720.mp4
    plays=(--repeat 4)
fi
out=$(mktemp -d /tmp/tddfa_host_work.XXXX)  # per-step logs and CSVs
mkdir -p "$results"
export PATH=/tmp/tddfa/site/bin:$PATH  # perf_analyzer
perf_libs=/tmp/tddfa/site/nvidia_pytriton.libs  # its libb64 and libcudart (the pytriton wheel's)

packages() {  # ROOT DIR: DIR holds the import names of ROOT's code
    mkdir -p "$2"
    ln -sfn "$1/python_backends/tddfa" "$2/tddfa"
    ln -sfn "$1/python_backends/tddfa_triton" "$2/tddfa_triton"
    ln -sfn "$1/tools" "$2/tddfa_tools"
    ln -sfn "$1/clients" "$2/tddfa_clients"
}
serve() {  # ROOT LABEL [REPOSITORY]: the server's stubs import ROOT's code (the .pth's folder)
    packages "$1" /tmp/tddfa/pkgs
    env -u PYTHONPATH python3 -m tddfa_tools.cli serve --model-repository "${3:-$repo}" --cuda-mps \
        --cuda-memory-pool-mb 4096 > "$results/serve_$2.log" 2>&1 &
    server=$!
    for _ in $(seq 120); do
        python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/v2/models/tddfa_track/ready', timeout=2)" \
            2>/dev/null && return 0
        sleep 1
    done
    echo "server $2 not ready"; tail -20 "$results/serve_$2.log"; return 1
}
stop() { kill -TERM "$server"; wait "$server"; }
step() {  # LABEL SECONDS COMMAND...: its output (and CSV) appended to all.log, tail shown
    echo "== $1 ($(date +%T))" | tee -a "$results/all.log"
    timeout "$2" "${@:3}" > "$out/$1.log" 2>&1 || echo "(exit $?)" | tee -a "$results/all.log"
    grep -v "pkg_resources\|UserWarning" "$out/$1.log" >> "$results/all.log"
    [ -f "$out/$1.csv" ] && cat "$out/$1.csv" >> "$results/all.log"
    grep -v "pkg_resources\|UserWarning\| INFO " "$out/$1.log" | tail -n 16
}
perf() {  # LABEL CLIENT_PACKAGES ARGS...: a tddfa perf sweep with the given client code
    step "$1" 90 env PYTHONPATH="$2" python3 -m tddfa_tools.cli perf --url localhost:8001 \
        --shared-memory cuda --measurement-interval 2000 --frames 8 --csv "$out/$1.csv" "${@:3}"
}

base_video() {  # MODE: the baseline's own client (one process per copy) at the running server
    if [ "${HOST_WORK_BASE_CLIENT:-base}" = this ]; then
        HOST_WORK_IN_FLIGHT=4 new_video "$1" base_video_this_client_
        return
    fi
    step "base_video_$1" 150 env PYTHONPATH=/tmp/tddfa/old python3 \
        "$here/benchmarks/cpu_probe.py" --url localhost:8001 --frames 19200 --no-results -- \
        python3 "$base/benchmarks/bench_video.py" --url localhost:8001 --decoder nvdec \
        --shared-memory cuda --no-encode --copies 16 --mode "$1" --video "$clip" --no-results
}

new_video() {  # MODE LABEL_PREFIX: this tree's stream client, 16 streams in one process, once
    # per frames-in-flight count of HOST_WORK_IN_FLIGHT (default 4; e.g. "4 8")
    for in_flight in ${HOST_WORK_IN_FLIGHT:-4}; do
        local label=$2$1
        [ "$in_flight" = 4 ] || label=$2$1_in_flight$in_flight
        step "$label" 150 env PYTHONPATH=/tmp/tddfa/new python3 "$here/benchmarks/bench_video.py" \
            --url localhost:8001 --decoder nvdec --shared-memory cuda --no-encode --streams 16 \
            --in-flight "$in_flight" --mode "$1" --video "$clip" "${plays[@]}" --no-results \
            --profile "$results/profile_$label"
    done
}

packages "$here" /tmp/tddfa/new
[ -n "$base" ] && packages "$base" /tmp/tddfa/old
if [ -n "$base" ] && [ "${HOST_WORK_BASE_SERVER:-1}" = 1 ]; then
    base_repo=/tmp/tddfa/base_repository
    step base_build 240 env PYTHONPATH=/tmp/tddfa/old python3 -m tddfa_tools.cli build \
        --device gpu --out "$base_repo" --models-dir /tmp/tddfa/base_models ${TDDFA_BUILD_ARGS:-}
    serve "$base" base "$base_repo" || exit 1
    for mode in ${HOST_WORK_MODES:-detect track}; do
        [ "${HOST_WORK_VIDEO:-1}" = 1 ] && base_video "$mode"
    done
    perf base_perf_rendered /tmp/tddfa/new --concurrency 1:128:127 --processes 4
    stop
fi
serve "$here" new || exit 1
if [ -n "$base" ] && [ "${HOST_WORK_BASE_SERVER:-1}" = 0 ]; then
    base_video detect  # HOST_WORK_BASE_SERVER=0: only the clients differ (same server code)
fi
for mode in ${HOST_WORK_MODES:-detect track}; do  # HOST_WORK_MODES: a subset
    [ "${HOST_WORK_VIDEO:-1}" = 1 ] && new_video "$mode" new_video_  # HOST_WORK_VIDEO=0: perf only
done
perf new_perf_rendered /tmp/tddfa/new --concurrency 1:128:127 --processes 4
if [ "${HOST_WORK_EXTRA:-1}" = 1 ]; then
    perf new_perf_rendered_track /tmp/tddfa/new --concurrency 1:128:127 --processes 4 --mode track
fi
if [ "${HOST_WORK_EXTRA:-1}" = 1 ]; then  # HOST_WORK_EXTRA=0: a shorter lease
    step new_video_track_4proc 150 env PYTHONPATH=/tmp/tddfa/new python3 \
        benchmarks/bench_video.py --url localhost:8001 --decoder nvdec --shared-memory cuda \
        --no-encode --streams 16 --processes 4 --mode track --video "$clip" "${plays[@]}" --no-results
    step new_perf_all 90 env PYTHONPATH=/tmp/tddfa/new LD_LIBRARY_PATH="$perf_libs" python3 -m \
        tddfa_tools.cli perf --url localhost:8001 --shared-memory cuda --measurement-interval \
        2000 --frames 8 --csv "$out/new_perf_all.csv" --concurrency 1:128:127 --outputs all \
        --stability-percentage 50 --max-trials 6
fi
stop
echo "== GPU waits of the stubs: $(grep -o 'blocking sync\|default CUDA scheduling ([^)]*)' "$results/serve_new.log" | sort | uniq -c | tr '\n' ' ')"
