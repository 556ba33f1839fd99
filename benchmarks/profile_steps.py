"""Where each in-process step's time goes: host Python, GPU kernels, or waiting.

For the ``tddfa`` ensemble's steps (tddfa.pipeline.Pipeline on real frames of the sample
video, the same step objects the server runs) and each batch size, three views:

1. ``wall``: median ms per call with the device synchronised after the step (its own time);
2. ``gpu``: CUDA kernel + copy time per call, from PyTorch's profiler (CUPTI sees every
   kernel of the process: PyTorch's, CuPy's and the CUDA-GL copies; not OpenGL's own work);
3. the host functions that take the time: cProfile over the same calls, top entries by
   self time (Python code, GL calls, CUDA API calls such as map/unmap and synchronise).

``wall - gpu`` is the step's host cost (launches, Python, GL driver, waits): when it
dominates, fewer launches or less Python per call is the fix, not faster kernels.

``--gl-phases`` adds, for the renderer on CUDA, the time of each phase of a call with the
device (CUDA and GL) finished at every phase boundary: host preparation, the upload (frames
and buffers into GL through one mapping), the GL work (glFinish: what OpenGL costs on this
GPU's graphics units) split into the target's clear, the meshes and the composite over the
frames, and the read-back.

  python3 benchmarks/profile_steps.py --repository build/gpu_repository --out /tmp/prof
  python3 benchmarks/profile_steps.py --device cpu --batch 1 --calls 5   # checks the script
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import _common
from bench_in_process import run_steps, steps_of, synchronize, to_device
from gpu_bench import read_frames


def step_inputs(pipeline, images, device: str) -> dict[str, dict]:
    """Each detect-mode step's inputs for ``images`` (one pass of the chain)."""
    inputs, tensors = {}, {"IMAGE": images}
    for name in steps_of("detect"):
        inputs[name] = dict(tensors)
        step = pipeline.steps()[name]
        if step is not None:
            tensors.update(step.run(tensors))
    synchronize(device)
    return inputs


def wall_ms(step, inputs, device: str, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        step.run(inputs)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def gpu_kernels(step, inputs, device: str, calls: int, top: int) -> tuple[float, list] | None:
    """(CUDA kernel + copy ms per call, [(name, ms per call, launches per call)] of the
    largest), from PyTorch's profiler over CUPTI; None off CUDA."""
    if not device.startswith("cuda"):
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            step.run(inputs)
        synchronize(device)
    per_name: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            per_name.setdefault(event.name, []).append(event.time_range.elapsed_us())
    rows = sorted(
        ((name[:70], sum(v) / calls / 1e3, len(v) / calls) for name, v in per_name.items()),
        key=lambda row: -row[1],
    )
    return sum(row[1] for row in rows), rows[:top]


def host_profile(step, inputs, device: str, calls: int, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        step.run(inputs)
        synchronize(device)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    lines = text.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start:])


class GLPhases:
    """Wall time of each renderer phase, the device finished at every boundary: patches
    CudaInterop.upload / read and Scene.draw for the duration of a ``with`` block."""

    PHASES = ("prepare", "upload", "gl clear", "gl meshes", "gl composite", "read", "finish")

    def __init__(self, device: str):
        self.device = device
        self.times: dict[str, list[float]] = {p: [] for p in self.PHASES}
        self._mark = 0.0

    def _lap(self, phase: str, gl: bool = False) -> None:
        if gl:
            from OpenGL import GL

            GL.glFinish()
        synchronize(self.device)
        now = time.perf_counter()
        self.times[phase].append(now - self._mark)
        self._mark = now

    def start(self) -> None:
        synchronize(self.device)
        self._mark = time.perf_counter()

    def __enter__(self):
        from tddfa.render.interop import CudaInterop
        from tddfa.render.scene import Scene

        self._saved = (CudaInterop.upload, CudaInterop.read, Scene.draw, Scene._draw_meshes)
        upload, read, draw, draw_meshes = self._saved
        phases = self

        def timed_upload(interop, *a, **k):
            phases._lap("prepare")
            upload(interop, *a, **k)
            phases._lap("upload")

        def timed_draw(scene, *a, **k):
            draw(scene, *a, **k)
            phases._lap("gl composite", gl=True)  # overlays too, when there are any

        def timed_meshes(scene, *a, **k):
            phases._lap("gl clear", gl=True)
            draw_meshes(scene, *a, **k)
            phases._lap("gl meshes", gl=True)

        def timed_read(interop, *a, **k):
            out = read(interop, *a, **k)
            phases._lap("read")
            return out

        CudaInterop.upload, CudaInterop.read = timed_upload, timed_read
        Scene.draw, Scene._draw_meshes = timed_draw, timed_meshes
        return self

    def __exit__(self, *exc) -> None:
        from tddfa.render.interop import CudaInterop
        from tddfa.render.scene import Scene

        CudaInterop.upload, CudaInterop.read, Scene.draw, Scene._draw_meshes = self._saved

    def report(self) -> str:
        return ", ".join(
            f"{p} {1e3 * statistics.median(v):.3f}" for p, v in self.times.items() if v
        )


def gl_phases(step, inputs, device: str, calls: int) -> str:
    with GLPhases(device) as phases:
        for _ in range(calls):
            phases.start()
            step.run(inputs)
            phases._lap("finish")
    return phases.report()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=_common.DEFAULT_REPOSITORY)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--calls", type=int, default=50, help="calls per step and view")
    parser.add_argument("--top", type=int, default=18, help="host functions listed per step")
    parser.add_argument("--video", type=Path, default=_common.default_video())
    parser.add_argument("--gl-phases", action="store_true", help="renderer phase times (CUDA)")
    parser.add_argument("--out", type=Path, help="folder for profile.md (else stdout only)")
    args = parser.parse_args(argv)

    from tddfa.pipeline import Pipeline

    pipeline = Pipeline(args.repository, device=args.device)
    frames = read_frames(args.video, max(args.batch))
    report = [f"# Step profile ({args.device}, {args.calls} calls per view)", ""]
    summary = ["| step | batch | wall ms | gpu ms | host/wait ms |", "|---|---|---|---|---|"]
    for batch in args.batch:
        images = to_device(frames[:batch], args.device, batch)[0]
        for _ in range(3):
            run_steps(pipeline, images, args.device, None)  # warm-up (graphs, GL targets)
        inputs = step_inputs(pipeline, images, args.device)
        for name in steps_of("detect"):
            step = pipeline.steps()[name]
            if step is None:
                continue
            wall = wall_ms(step, inputs[name], args.device, args.calls)
            kernels = gpu_kernels(step, inputs[name], args.device, args.calls, args.top)
            host = host_profile(step, inputs[name], args.device, args.calls, args.top)
            gpu, rows = kernels if kernels else (None, [])
            gpu_text = "-" if gpu is None else f"{gpu:.3f}"
            rest = "-" if gpu is None else f"{wall - gpu:.3f}"
            summary.append(f"| {name} | {batch} | {wall:.3f} | {gpu_text} | {rest} |")
            report += [f"## {name}, batch {batch}: wall {wall:.3f} ms, gpu {gpu_text} ms", ""]
            if args.gl_phases and name == "face_renderer" and args.device.startswith("cuda"):
                phases = gl_phases(step, inputs[name], args.device, args.calls)
                summary.append(f"| (renderer phases, median ms) | {batch} | {phases} | | |")
            if rows:
                report += ["GPU work per call (ms, launches):", "```"]
                report += [f"{ms:8.4f} {n:6.1f}  {kernel}" for kernel, ms, n in rows] + ["```"]
            report += [
                "Host functions (cProfile, all calls, by self time):",
                "```",
                host,
                "```",
                "",
            ]
            print(summary[-1], flush=True)
    pipeline.close()
    text = "\n".join(summary + [""] + report)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
