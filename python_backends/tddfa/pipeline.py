"""The ensembles in one process, from a built model repository, without Triton.

Runs the same step objects as the served models (tddfa.steps) on the same built files,
so tests can compare the server with it and benchmarks can measure Triton's overhead.
``Pipeline`` is the stateless ``tddfa`` ensemble; ``Pipeline.track`` runs frames of one
sequence as ``tddfa_track`` does.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from tddfa.aligner import Aligner
from tddfa.bfm import load_bfm
from tddfa.config import REGRESSOR_SIZE, PipelineConfig
from tddfa.contract import (
    DEFAULT_RENDER_MODE,
    OUTPUT_NAMES,
    RENDER_MODE_PARAMETER,
    SEQUENCE_OUTPUT_NAMES,
)
from tddfa.detector import Detector
from tddfa.render.step import build_render_step, build_vertices_step
from tddfa.steps import AlignerStep, DetectorStep, TrackerStep
from tddfa.tracking import SequenceStore, Tracker


class Pipeline:
    """``Pipeline(repository)(images)`` -> the ``tddfa`` ensemble's outputs (batch first)."""

    def __init__(self, repository: Path, device: str = "cpu", render: bool = True):
        from tddfa.runners import make_runner

        repository = Path(repository)
        build = json.loads((repository / "BUILD.json").read_text())
        if build.get("flavour", "python") != "python":
            raise ValueError(
                f"{repository} is a {build['flavour']} build: its networks are served natively "
                "(one-graph detector, engines); the in-process pipeline runs python-flavour "
                "repositories: build one with `tddfa build --flavour python`"
            )
        fields = {f.name for f in dataclasses.fields(PipelineConfig)}
        self.config = cfg = PipelineConfig(**{k: v for k, v in build.items() if k in fields})
        tracker_config = _parameters(repository / "face_tracker" / "config.pbtxt")
        self.track_config = PipelineConfig.from_parameters(
            {**dataclasses.asdict(cfg), **tracker_config}
        )
        batch_sizes = range(1, int(build.get("max_batch_size", 1)) + 1)

        def runner(model: str, network: str, dims: dict):
            # as the served GPU steps run them: CUDA graphs, each network's precision
            owner = _network_owner(repository, model, network)
            config = _parameters(repository / owner / "config.pbtxt")
            version = repository / owner / "1"
            run = make_runner(
                version / network if owner == model else version,
                device,
                cuda_graphs=device != "cpu",
                fp16=config.get(f"{network}_precision", "fp16") == "fp16",
            )
            if device != "cpu" and hasattr(run, "warmup"):  # graphs now, not under traffic
                run.warmup(dims, batch_sizes)
            return run

        canvas = {"DETECTOR_INPUT": (3, cfg.canvas_height, cfg.canvas_width)}
        crops = {"CROPS": (cfg.max_faces, 3, REGRESSOR_SIZE, REGRESSOR_SIZE)}
        bfm = load_bfm(repository / "face_aligner" / "1" / "bfm.npz")
        self.detector = DetectorStep(
            Detector(cfg, runner("face_detector", "face_detector", canvas))
        )
        aligner = Aligner(cfg, runner("face_aligner", "face_regressor", crops), bfm)
        self.aligner = AlignerStep(aligner)
        self.tracker = TrackerStep(
            Tracker(self.track_config, self.detector.detector, aligner),
            SequenceStore(idle_timeout=3600),
        )
        self.vertices = build_vertices_step(repository / "face_vertices" / "1")
        self.renderer = None
        if render:  # the served renderer's own files and settings
            render_config = PipelineConfig.from_parameters(
                {
                    **dataclasses.asdict(cfg),
                    **_parameters(repository / "face_renderer" / "config.pbtxt"),
                }
            )
            self.renderer = build_render_step(
                repository / "face_renderer" / "1", device, render_config
            )

    def _finish(self, t: dict, names: tuple[str, ...], render_mode: str) -> dict[str, Any]:
        if self.renderer is not None:
            frames = len(t["IMAGE"])
            t.update(
                self.renderer.run(t, parameters=[{RENDER_MODE_PARAMETER: render_mode}] * frames)
            )
            t.update(self.vertices.run(t))
        return {name: t[name] for name in names if name in t}

    def __call__(self, images, render_mode: str = DEFAULT_RENDER_MODE) -> dict[str, Any]:
        """images: (B,H,W,3) uint8 RGB (or one (H,W,3) frame) -> {output: (B, ...)}."""
        if images.ndim == 3:
            images = images[None]
        t = {"IMAGE": images}
        self.detector.validate(t)
        t.update(self.detector.run(t))
        t.update(self.aligner.run(t))
        return self._finish(t, OUTPUT_NAMES, render_mode)

    def track(
        self,
        image,
        sequence_id: int,
        start: bool = False,
        end: bool = False,
        smoothing: bool | None = None,
    ):
        """One frame (H,W,3) of sequence ``sequence_id`` -> ``tddfa_track``'s outputs (1, ...).
        ``smoothing``: the sequence's choice on its START frame (None: the model default)."""
        images = image[None] if image.ndim == 3 else image
        t = {
            "IMAGE": images,
            "START": np.asarray([[int(start)]], np.int32),
            "END": np.asarray([[int(end)]], np.int32),
            "READY": np.ones((1, 1), np.int32),
            "CORRID": np.asarray([[sequence_id]], np.uint64),
        }
        self.tracker.validate(t)
        parameters = [{} if smoothing is None else {"smoothing": smoothing}]
        t.update(self.tracker.run(t, parameters=parameters))
        return self._finish(t, SEQUENCE_OUTPUT_NAMES, DEFAULT_RENDER_MODE)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()


def _network_owner(repository: Path, model: str, network: str) -> str:
    """The model whose files hold ``network`` for ``model``: ``model`` itself
    (``<version>/<network>/``), or the served network model it calls through BLS
    (``--networks models``: the network in that model's version folder)."""
    return model if (repository / model / "1" / network).is_dir() else network


def _parameters(config_path: Path) -> dict[str, str]:
    """The string ``parameters`` of a config.pbtxt (what its model reads at load)."""
    text = config_path.read_text()
    pattern = r'key:\s*"([^"]+)"\s*value\s*\{\s*string_value:\s*"([^"]*)"'
    return dict(re.findall(pattern, text))
