"""(g) This project against the original 3DDFA_V2 on the same machine, in one run.

Four figures per mode (``detect``: every frame detected; ``track``: faces tracked):

1. **the original in memory**: ../shared/reference/3ddfa_v2_runner (the original code,
   ONNX Runtime on the CPU, its C renderer; frames decoded into memory first, no encode);
2. **the original file to file**: (1) plus the measured cost of decoding and encoding the
   same clip with PyAV / libx264 at the settings of ``tddfa video`` (the original's loop
   has no video I/O of its own; measured here on the same clip, frames decoded and
   re-encoded in one thread);
3. **``tddfa video`` file to file**: the real command through a real tritonserver (PyAV
   decode, the server, libx264 encode, audio copied), twice: the command's wall clock, and
   its rate after the first 10 frames, as (1) is timed: (N - 10) / (time of the N-frame
   clip - time of its first 10 frames alone), which takes out the process's start-up
   (Python imports, connecting, the stream's set-up) and the warm-up frames; each the
   median of ``--video-runs`` runs;
4. **served in memory**: FrameClient over gRPC with the frames decoded beforehand,
   RENDERED returned (what (1) covers: detect/track, regress, dense mesh, render).

The ratios that matter are (3) / (2) (file to file) and (4) / (1) (in memory). The bar on
the 2-core box: file to file, detect >= 1.5x and track >= 1.2x the original.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    WORK_DIR,
    append_results,
    base_parser,
    first_frames_clip,
    format_table,
    load_average,
    read_frames,
    server_for,
    setup_logging,
)

RUNNER = REPO_ROOT.parent / "shared" / "reference" / "3ddfa_v2_runner"
# The runner's copy of 3DDFA_V2 lacks this upstream config (configs/mb05_120x120.yml at the
# runner's upstream commit); the scratch copy gets it so bench_ref.py can load the model.
MB05_CONFIG = """arch: mobilenet
widen_factor: 0.5
checkpoint_fp: weights/mb05_120x120.pth
bfm_fp: configs/bfm_noneck_v3.pkl
size: 120
num_params: 62
"""
WARM_UP = 10  # frames the original runs before its timing starts
ORIGINAL_MODES = {"detect": "onnx-cpu detect-every-frame", "track": "onnx-cpu tracking"}


def run_original(frames: int, threads: int, assets: Path) -> dict[str, float]:
    """frames/s of the original per mode (its own timing: frames in memory, no encode)."""
    copy = WORK_DIR / "ref_runner"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(RUNNER, copy)
    for path in copy.rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)
    config = copy / "3DDFA_V2" / "configs" / "mb05_120x120.yml"
    if not config.exists():
        config.write_text(MB05_CONFIG)
    out = WORK_DIR / "ref" / "ref.json"
    env = dict(os.environ, PYTHON=sys.executable, REF_ASSETS=str(assets))
    env["REF_WORKDIR"] = str(WORK_DIR / "ref_work")
    command = [
        "bash", str(copy / "run.sh"), str(out), "--threads", str(threads),
        "--frames", str(frames), "--modes", "onnx-detect,onnx-track",
    ]  # fmt: skip
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    modes = json.loads(out.read_text())["modes"]
    return {mode: float(modes[key]["fps"]) for mode, key in ORIGINAL_MODES.items()}


def server_cpu_seconds(url: str) -> dict[str, float]:
    """CPU seconds so far of the tritonserver serving gRPC at ``url`` and of each of its
    Python-backend stubs, by model name (/proc: Linux only; empty elsewhere)."""
    port = url.rpartition(":")[2]
    ticks = os.sysconf("SC_CLK_TCK")
    processes = {}  # pid -> (parent pid, command line, CPU seconds)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        processes[int(entry.name)] = (
            int(fields[1]),
            [c.decode(errors="replace") for c in command],
            cpu,
        )
    servers = [
        pid for pid, (_, command, _) in processes.items()
        if command and command[0].endswith("tritonserver") and f"--grpc-port={port}" in command
    ]  # fmt: skip
    if not servers:
        return {}
    out = {"tritonserver": processes[servers[0]][2]}
    for parent, command, cpu in processes.values():
        if parent == servers[0] and len(command) > 1 and command[1].endswith("model.py"):
            model = Path(command[1]).parents[1].name
            out[model] = out.get(model, 0.0) + cpu
    return out


def served_in_memory(url: str, frames: list, mode: str) -> tuple[float, dict[str, float]]:
    """frames/s through the server with decoded frames, RENDERED back (WARM_UP frames first),
    and the CPU milliseconds per frame of the client, tritonserver and each model's stubs."""
    from tddfa_clients.triton_client import FrameClient, new_sequence_id
    from tddfa_clients.video import model_for

    with FrameClient(url, "grpc", model=model_for(mode), outputs=("RENDERED", "FACE_COUNT")) as c:
        sequence = (lambda: {"sequence_id": new_sequence_id()}) if mode == "track" else dict
        for _ in c.infer_stream(enumerate(frames[:WARM_UP]), **sequence()):
            pass
        before, client = server_cpu_seconds(url), time.process_time()
        start = time.perf_counter()
        done = sum(1 for _ in c.infer_stream(enumerate(frames[WARM_UP:]), **sequence()))
        elapsed = time.perf_counter() - start
        client = time.process_time() - client
        after = server_cpu_seconds(url)
    cpu = {"client": 1000 * client / done}
    cpu.update({name: 1000 * (after[name] - before.get(name, 0.0)) / done for name in after})
    return done / elapsed, cpu


def video_io_ms(clip: Path) -> float:
    """Milliseconds per frame to decode ``clip`` and encode every frame again, with the
    decoder and encoder ``tddfa video`` uses on the CPU (PyAV, libx264 at its defaults)."""
    from tddfa_clients.video_io import open_decoder, open_encoder, probe

    out = WORK_DIR / "vs_original_io.mp4"
    start = time.perf_counter()
    frames = 0
    with open_decoder(clip, "cpu") as decoder, open_encoder(out, probe(clip), "cpu") as encoder:
        for frame in decoder:
            encoder.write(frame.host_image(), frame.pts)
            frames += 1
    return 1000 * (time.perf_counter() - start) / max(frames, 1)


def tddfa_video(url: str, clip: Path, mode: str, runs: int) -> tuple[int, float]:
    """Frames and median wall-clock seconds of the `tddfa video` command on ``clip`` (decode
    + server + libx264 encode, the process's start-up included)."""
    import av

    out = WORK_DIR / f"vs_original_{mode}.mp4"
    command = [
        sys.executable, "-m", "tddfa_tools.cli", "video", str(clip), str(out),
        "--url", url, "--protocol", "grpc", "--mode", mode,
    ]  # fmt: skip
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
    with av.open(str(out)) as container:
        count = container.streams.video[0].frames
    return count, statistics.median(seconds)


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--frames", type=int, default=100, help="timed frames (default 100)")
    parser.add_argument("--threads", type=int, default=2, help="the original's ORT threads")
    parser.add_argument("--url", help="a running server's gRPC host:port (default: start one)")
    parser.add_argument(
        "--video-runs", type=int, default=3,
        help="runs of `tddfa video` per clip and mode, median taken (default 3)",
    )  # fmt: skip
    args = parser.parse_args()
    setup_logging(args.verbose)
    assets = args.video.parents[1]
    clip = first_frames_clip(args.video, args.frames + WARM_UP)
    warm_up = first_frames_clip(args.video, WARM_UP)
    load_before = load_average()
    io_ms = video_io_ms(clip)
    original = run_original(args.frames, args.threads, assets)
    frames = read_frames(args.video, args.frames + WARM_UP)
    rows, cpu_rows = [], []
    with server_for(args.repository, args.url) as url:
        for mode in ("detect", "track"):
            memory, cpu = served_in_memory(url, frames, mode)
            cpu_rows.append((mode, cpu))
            count, seconds = tddfa_video(url, clip, mode, args.video_runs)
            warm_count, warm_seconds = tddfa_video(url, warm_up, mode, args.video_runs)
            command_fps = count / seconds
            video = (count - warm_count) / (seconds - warm_seconds)
            in_memory = original[mode]
            file_to_file = 1000 / (1000 / in_memory + io_ms)
            rows.append(
                [mode, in_memory, file_to_file, command_fps, video,
                 f"{video / file_to_file:.2f}x", f"{command_fps / file_to_file:.2f}x", memory,
                 f"{memory / in_memory:.2f}x"]
            )  # fmt: skip
    table = format_table(
        [
            "mode", "original in memory fps", "original file to file fps",
            "tddfa video fps (command)", f"tddfa video fps after {WARM_UP} frames",
            "file to file ratio", "ratio with start-up", "served in memory fps",
            "in memory ratio",
        ],
        rows,
    )  # fmt: skip
    processes = sorted({name for _, cpu in cpu_rows for name in cpu if name != "client"})
    cpu_table = format_table(
        ["mode", "client", *processes, "total"],
        [
            [mode, cpu["client"], *(cpu.get(p, 0.0) for p in processes), sum(cpu.values())]
            for mode, cpu in cpu_rows
        ],
    )
    table += "\n\nCPU ms per frame, served in memory (client, server, each model's stubs):\n\n"
    table += cpu_table
    print(table)
    print(f"decode + encode: {io_ms:.1f} ms/frame")
    if not args.no_results:
        append_results(
            "(g) this project vs the original 3DDFA_V2, same machine, one run",
            table,
            [
                f"original: 3ddfa_v2_runner, ONNX Runtime CPU, {args.threads} threads, "
                f"{args.frames} timed frames of {args.video.name} after {WARM_UP} warm-up, frames "
                "decoded beforehand, render included, no encode",
                f"original file to file: 1 / (1 / in-memory fps + {io_ms:.1f} ms), the "
                f"decode + encode of the {args.frames + WARM_UP}-frame clip measured here (PyAV, "
                "libx264 at tddfa video's defaults, one thread)",
                "tddfa video: the command, file to file (PyAV decode + libx264 encode, audio), "
                f"median of {args.video_runs} runs; 'after {WARM_UP} frames': (N - {WARM_UP}) / "
                f"(seconds of the N-frame clip - seconds of its first {WARM_UP} frames), the "
                "file to file ratio's figure; "
                "served in memory: FrameClient gRPC, frames decoded beforehand, RENDERED "
                "returned (a sequence for track)",
                f"repository: {args.repository}; load before the run: {load_before}",
            ],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
