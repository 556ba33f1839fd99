"""face_renderer alone, per render mode: milliseconds per frame on real faces.

The faces come from the in-process ensemble (no renderer) on the sample video's frames: its
PARAMS and FACE_BOXES give face_renderer's inputs (tddfa.render.step.inputs_from_outputs).
Each mode runs the face_renderer step over batches of those frames; the median of many
batches is reported per frame. On the CPU the step draws with the compiled rasteriser
(tddfa.render.cpu_renderer); ``--opengl`` also times OpenGL on Mesa llvmpipe (the renderer
CPU builds used before, and the GPU renderer's code) on the same frames, the two in
alternation so that both see the same load on a shared machine. On a GPU (``--device
cuda:0``) the inputs live on the device (CuPy) and each batch is timed to its completion
(stream synchronised).

``--breakdown`` (CPU renderer) also times each phase of a frame: the BFM decode, the
vertex stage, the triangles, the lines, the blend, the uv maps and the rest (Python,
the frame's copy), mean milliseconds per frame, in a pass of its own.

  .venv/bin/python benchmarks/bench_render.py --opengl --frames 60
  .venv/bin/python benchmarks/bench_render.py --breakdown --frames 60
  .venv/bin/python benchmarks/bench_render.py --device cuda:0 --batch 8
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from _common import (
    REPO_ROOT,
    append_results,
    base_parser,
    format_table,
    read_frames,
    setup_logging,
)

LOG = logging.getLogger("benchmarks.render")
FACES = ("ALPHA_SHP", "ALPHA_EXP", "TRANSFORM", "NUM_FACES")
INPUTS_CACHE = REPO_ROOT / "build" / "bench" / "render_inputs.npz"


def face_inputs(repository: Path, video: Path, frames: int, device: str) -> dict[str, np.ndarray]:
    """IMAGE and face_renderer's inputs for the first ``frames`` frames (cached; the
    ensemble without the renderer runs on ``device``)."""
    from tddfa.pipeline import Pipeline
    from tddfa.render.step import inputs_from_outputs

    if INPUTS_CACHE.is_file():
        with np.load(INPUTS_CACHE) as cached:
            if len(cached["IMAGE"]) >= frames and "FRAMES_OF" in cached.files:
                if str(cached["FRAMES_OF"]) == str(video):
                    return {k: cached[k][:frames] for k in ("IMAGE", *FACES)}
    pipeline = Pipeline(repository, device=device, render=False)
    images = np.stack(read_frames(video, frames))
    rows = [inputs_from_outputs(pipeline(image[None]), image[None]) for image in images]
    data = {name: np.concatenate([r[name] for r in rows]) for name in ("IMAGE", *FACES)}
    INPUTS_CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(INPUTS_CACHE, FRAMES_OF=np.array(str(video)), **data)
    return data


def time_mode(
    step, data: dict, mode: str, batch: int, rounds: int, device: str
) -> list[tuple[float, float]]:
    """Per-frame (wall, process CPU) seconds of every batch (after one warm-up batch). The
    CPU time counts every thread of the process (llvmpipe's too) and is what a shared
    machine's load inflates least."""
    from tddfa.contract import RENDER_MODE_PARAMETER

    sync = lambda: None  # noqa: E731
    if device != "cpu":
        import cupy

        data = {k: cupy.asarray(v) for k, v in data.items()}
        sync = cupy.cuda.get_current_stream().synchronize
    parameters = [{RENDER_MODE_PARAMETER: mode}] * batch
    starts = list(range(0, len(data["IMAGE"]) - batch + 1, batch))
    first = {k: v[:batch] for k, v in data.items()}
    step.run(first, parameters)  # warm-up: shaders, buffers, registrations
    sync()
    times = []
    for _ in range(rounds):
        for start in starts:
            inputs = {k: v[start : start + batch] for k, v in data.items()}
            began, cpu = time.perf_counter(), time.process_time()
            step.run(inputs, parameters)
            sync()
            times.append(
                ((time.perf_counter() - began) / batch, (time.process_time() - cpu) / batch)
            )
    return times


# --breakdown: the CPU renderer's phases, each the module functions it calls
PHASES = {
    "vertex stage": [("shading", "vertex_records")],
    "triangles": [("raster", "fill_triangles"), ("raster", "fill_depth")],
    "lines": [("raster", "draw_lines")],
    "blend": [
        ("cpu_blend", "composite"),
        ("cpu_blend", "composite_colour"),
        ("cpu_blend", "composite_texture"),
    ],
    "uv map": [("cpu_atlas", "paint_atlas")],
}


@contextlib.contextmanager
def phase_timer(step) -> Iterator[dict[str, float]]:
    """Seconds spent in each phase (PHASES, and "decode": the step's BFM decode) while
    inside, accumulated in the dict it yields: the functions are wrapped, then restored."""
    import importlib

    spent = dict.fromkeys(["decode", *PHASES], 0.0)

    def timed(phase: str, function):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - began

        return wrapper

    patched = [(step.decoder, "vertices", step.decoder.vertices, "decode")]
    if getattr(step, "_coarse_decoder", None) is not None:  # the coarse faces' decode
        patched.append((step, "_coarse_decoder", step._coarse_decoder, "decode"))
    for phase, names in PHASES.items():
        for module, name in names:
            owner = importlib.import_module(f"tddfa.render.{module}")
            if hasattr(owner, name):  # an older tddfa (a baseline) may lack some
                patched.append((owner, name, getattr(owner, name), phase))
    for owner, name, function, phase in patched:
        setattr(owner, name, timed(phase, function))
    try:
        yield spent
    finally:
        for owner, name, function, _ in patched:
            if owner is step.decoder:
                delattr(owner, name)  # back to the class's method
            elif owner is step:
                setattr(owner, name, function)
            else:
                setattr(owner, name, function)


def breakdown_row(step, data: dict, mode: str, rounds: int) -> list:
    """One mode's mean ms per frame in each phase, the rest and the total (batch 1)."""
    from tddfa.contract import RENDER_MODE_PARAMETER

    parameters = [{RENDER_MODE_PARAMETER: mode}]
    frames = [{k: v[i : i + 1] for k, v in data.items()} for i in range(len(data["IMAGE"]))]
    step.run(frames[0], parameters)
    with phase_timer(step) as spent:
        began = time.perf_counter()
        for _ in range(rounds):
            for inputs in frames:
                step.run(inputs, parameters)
        total = time.perf_counter() - began
    count = rounds * len(frames)
    phases = [1000 * spent[name] / count for name in spent]
    return [mode, *phases, 1000 * total / count - sum(phases), 1000 * total / count]


def main(argv: list[str] | None = None) -> int:
    from tddfa.contract import RENDER_MODES

    parser = base_parser(__doc__)
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default: cpu)")
    parser.add_argument("--modes", nargs="+", default=list(RENDER_MODES), choices=RENDER_MODES)
    parser.add_argument("--frames", type=int, default=60, help="video frames (default 60)")
    parser.add_argument("--batch", type=int, default=1, help="frames per batch (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the frames")
    parser.add_argument(
        "--opengl", action="store_true", help="also time OpenGL on Mesa llvmpipe (CPU only)"
    )
    parser.add_argument(
        "--threads", type=int, help="the CPU renderer's threads a frame (default: the config's)"
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="also time each phase of the CPU renderer"
    )
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    os.environ.setdefault("EGL_PLATFORM", "surfaceless")
    if args.opengl and args.device != "cpu":
        parser.error("--opengl compares on the CPU: the GPU renderer is OpenGL already")
    if args.breakdown and args.device != "cpu":
        parser.error("--breakdown times the CPU renderer's phases: pass --device cpu")

    from tddfa.render.step import build_render_step

    if args.device == "cpu":  # as the server's CPU instances
        from tddfa.cpu_threads import blas_on_one_thread

        blas_on_one_thread()
    data = face_inputs(args.repository, args.video, args.frames, args.device)
    faces = data["NUM_FACES"].ravel()
    version = args.repository / "face_renderer" / "1"
    config = None
    if args.threads is not None:
        from tddfa.config import PipelineConfig

        config = PipelineConfig(render_threads=args.threads)
    steps = {"this": build_render_step(version, args.device, config)}
    if args.opengl:
        steps["opengl"] = build_render_step(version, opengl=True)
    renderer = type(steps["this"].renderer).__name__
    rows = []
    try:
        for mode in args.modes:
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
            for _ in range(args.rounds):  # alternate, so both see the same machine load
                for name, step in steps.items():
                    times[name] += time_mode(step, data, mode, args.batch, 1, args.device)
            row = _row(mode, args.batch, np.array(times["this"]))
            if args.opengl:
                gl = 1000 * np.median(np.array(times["opengl"]), axis=0)
                row += [float(gl[0]), float(gl[1]), f"{gl[0] / row[2]:.1f}x"]
            rows.append(row)
            LOG.info("%s: median %.2f ms/frame", mode, row[2])
        phases = []
        if args.breakdown:
            phases = [breakdown_row(steps["this"], data, m, args.rounds) for m in args.modes]
    finally:
        for step in steps.values():
            step.close()
    header = ["mode", "batch", f"{renderer} median ms/frame", "p10", "p90", "CPU ms", "batches"]
    if args.opengl:
        header += ["OpenGL llvmpipe median ms", "CPU ms", "speed-up"]
    table = format_table(header, rows)
    if phases:
        names = ["decode", *PHASES, "rest", "total"]
        table += "\n\nmean ms per frame in each phase (--breakdown, a pass of its own):\n\n"
        table += format_table(["mode", *names], phases)
    print(table)
    notes = [
        f"frames: {args.video.name}, first {len(faces)}, faces per frame {faces.min()}-"
        f"{faces.max()} (mean {faces.mean():.2f}), {data['IMAGE'].shape[2]}x"
        f"{data['IMAGE'].shape[1]}; device {args.device}; renderer {renderer}"
        + (f" ({steps['this'].renderer.threads} thread(s) a frame)" if args.device == "cpu" else "")
        + ("; OpenGL timed in alternation with it" if args.opengl else "")
        + f"; LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS', 'unset')}"
    ]
    if not args.no_results:
        append_results("face_renderer per render mode (benchmarks/bench_render.py)", table, notes)
    return 0


def _row(mode: str, batch: int, times: np.ndarray) -> list:
    """times: (N, 2) wall and CPU seconds per frame."""
    wall, cpu = times[:, 0] * 1000, times[:, 1] * 1000
    return [mode, batch, float(np.median(wall)), float(np.percentile(wall, 10)),
            float(np.percentile(wall, 90)), float(np.median(cpu)), len(wall)]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
