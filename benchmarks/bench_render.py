"""face_renderer alone, per render mode: milliseconds per frame on real faces.

The faces come from the in-process ensemble (no renderer) on the sample video's frames: its
PARAMS and FACE_BOXES give face_renderer's inputs (tddfa.render.step.inputs_from_outputs).
Each mode runs the face_renderer step over batches of those frames; the median of many
batches is reported per frame. On a GPU (``--device cuda:0``) the inputs live on the device
(CuPy) and each batch is timed to its completion (stream synchronised).

``--old-backends DIR`` also times the renderer of an older checkout on the same frames, in
alternation with this one (so both see the same load on a shared machine): DIR is that
checkout's ``python_backends`` (e.g. ``git archive d79d5f9 python_backends | tar -x -C
/tmp/old``), whose ``tddfa.steps.RenderStep`` drew image-space vertices (MODEL_VERTICES +
TRANSFORM) with ``tddfa.renderer``.

  .venv/bin/python benchmarks/bench_render.py --modes shaded --frames 60
  .venv/bin/python benchmarks/bench_render.py --device cuda:0 --batch 8
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
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

_OLD_RENDERER = r"""
import json, os, sys, time
import numpy as np
os.environ.setdefault("EGL_PLATFORM", "surfaceless")
from tddfa.bfm import load_bfm
from tddfa.renderer import MeshRenderer
from tddfa.steps import RenderStep
data = dict(np.load(sys.argv[1]))
bfm = load_bfm(sys.argv[2])
batch, rounds = int(sys.argv[3]), int(sys.argv[4])
n = bfm.num_vertices
basis = np.concatenate([bfm.w_shp, bfm.w_exp], 1)
alpha = np.concatenate([data["ALPHA_SHP"], data["ALPHA_EXP"]], -1)  # (B, K, 50)
model = (alpha @ basis.T + bfm.u).reshape(*alpha.shape[:2], n, 3).transpose(0, 1, 3, 2)
model = np.ascontiguousarray(model, dtype=np.float32)
step = RenderStep(MeshRenderer(bfm.tri, alpha=0.6))
times = []
for _ in range(rounds):
    for start in range(0, len(data["IMAGE"]) - batch + 1, batch):
        part = slice(start, start + batch)
        inputs = {"IMAGE": data["IMAGE"][part], "MODEL_VERTICES": model[part],
                  "TRANSFORM": data["TRANSFORM"][part], "NUM_FACES": data["NUM_FACES"][part]}
        began = time.perf_counter()
        step.run(inputs)
        times.append((time.perf_counter() - began) / batch)
print(json.dumps(times))
"""


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


def time_mode(step, data: dict, mode: str, batch: int, rounds: int, device: str) -> list[float]:
    """Per-frame seconds of every batch (after one warm-up batch)."""
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
            began = time.perf_counter()
            step.run(inputs, parameters)
            sync()
            times.append((time.perf_counter() - began) / batch)
    return times


def old_times(old: Path, data_path: Path, bfm: Path, batch: int, rounds: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(old), "EGL_PLATFORM": "surfaceless"}
    args = [sys.executable, "-c", _OLD_RENDERER, str(data_path), str(bfm), str(batch), str(rounds)]
    out = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(f"the old renderer failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from tddfa.contract import RENDER_MODES

    parser = base_parser(__doc__)
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default: cpu)")
    parser.add_argument("--modes", nargs="+", default=list(RENDER_MODES), choices=RENDER_MODES)
    parser.add_argument("--frames", type=int, default=60, help="video frames (default 60)")
    parser.add_argument("--batch", type=int, default=1, help="frames per batch (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the frames")
    parser.add_argument("--old-backends", type=Path, help="also time an older renderer")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    os.environ.setdefault("EGL_PLATFORM", "surfaceless")

    from tddfa.render.step import build_render_step

    data = face_inputs(args.repository, args.video, args.frames, args.device)
    faces = data["NUM_FACES"].ravel()
    version = args.repository / "face_renderer" / "1"
    step = build_render_step(version, args.device)
    rows, notes = [], []
    try:
        for mode in args.modes:
            times = np.array(time_mode(step, data, mode, args.batch, args.rounds, args.device))
            rows.append(_row(mode, args.batch, times))
            LOG.info("%s: median %.2f ms/frame", mode, rows[-1][2])
    finally:
        step.close()
    if args.old_backends:
        bfm = version / "bfm.npz"
        old, new = [], []
        for _ in range(args.rounds):  # alternate, so both see the same machine load
            old += old_times(args.old_backends, INPUTS_CACHE, bfm, args.batch, 1)
            step = build_render_step(version, args.device)
            try:
                new += time_mode(step, data, "shaded", args.batch, 1, args.device)
            finally:
                step.close()
        rows.append(_row("shaded (this, alternating)", args.batch, np.array(new)))
        rows.append(_row(f"shaded ({args.old_backends})", args.batch, np.array(old)))
        notes.append(f"old renderer: {args.old_backends}, run alternately with this one")
    table = format_table(["mode", "batch", "median ms/frame", "p10", "p90", "batches"], rows)
    print(table)
    notes.append(
        f"frames: {args.video.name}, first {len(faces)}, faces per frame {faces.min()}-"
        f"{faces.max()} (mean {faces.mean():.2f}), {data['IMAGE'].shape[2]}x"
        f"{data['IMAGE'].shape[1]}; device {args.device}; LP_NUM_THREADS="
        f"{os.environ.get('LP_NUM_THREADS', 'unset')}"
    )
    if not args.no_results:
        append_results("face_renderer per render mode (benchmarks/bench_render.py)", table, notes)
    return 0


def _row(mode: str, batch: int, times: np.ndarray) -> list:
    ms = times * 1000
    return [mode, batch, float(np.median(ms)), float(np.percentile(ms, 10)),
            float(np.percentile(ms, 90)), len(ms)]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
