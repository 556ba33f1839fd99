"""The whole ensemble in one process, from a built model repository, without Triton.

Runs the same step objects as the served models (tddfa.steps) on the same built files,
so tests can compare the server with it and benchmarks can measure Triton's overhead.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from tddfa.bfm import load_bfm
from tddfa.config import NUM_EXP, NUM_SHAPE, REGRESSOR_SIZE, PipelineConfig
from tddfa.steps import (
    LandmarkToVertexStep,
    NetworkStep,
    PreprocessStep,
    RenderStep,
    RoiCropStep,
)

ENSEMBLE_OUTPUTS = (
    "RENDERED",
    "FACE_COUNT",
    "FACE_BOXES",
    "LANDMARKS",
    "POSE",
    "PARAMS",
    "VERTICES",
)


class Pipeline:
    """``Pipeline(repository)(image)`` -> the ensemble's outputs for one frame (batch of 1)."""

    def __init__(self, repository: Path, device: str = "cpu", render: bool = True):
        from tddfa.runners import make_runner

        repository = Path(repository)
        build = json.loads((repository / "BUILD.json").read_text())
        fields = {f.name for f in dataclasses.fields(PipelineConfig)}
        self.config = PipelineConfig(**{k: v for k, v in build.items() if k in fields})

        def runner(model: str):
            # as the served GPU steps run them: CUDA graphs, each network's precision
            config = (repository / model / "config.pbtxt").read_text()
            fp32 = re.search(r'key: "precision"\s*value\s*\{\s*string_value: "fp32"', config)
            return make_runner(
                repository / model / "1", device, cuda_graphs=device != "cpu", fp16=fp32 is None
            )

        self.preprocess = PreprocessStep(self.config)
        self.detector = NetworkStep(runner("face_detector"), ["DETECTOR_INPUT"])
        self.roi_crop = RoiCropStep(self.config)
        self.regressor = NetworkStep(runner("face_regressor"), ["CROPS"])
        bfm = load_bfm(repository / "landmark_to_vertex" / "1" / "bfm.npz")
        self.landmark_to_vertex = LandmarkToVertexStep(self.config, bfm)
        self.bfm_decoder = NetworkStep(runner("bfm_decoder"), ["ALPHA_SHP", "ALPHA_EXP"])
        if device != "cpu":  # CUDA graphs of every batch size now, not under traffic
            k = self.config.max_faces
            dims = {
                "DETECTOR_INPUT": (3, self.config.canvas_height, self.config.canvas_width),
                "CROPS": (k, 3, REGRESSOR_SIZE, REGRESSOR_SIZE),
                "ALPHA_SHP": (k, NUM_SHAPE),
                "ALPHA_EXP": (k, NUM_EXP),
            }
            batch_sizes = range(1, int(build.get("max_batch_size", 1)) + 1)
            for step in (self.detector, self.regressor, self.bfm_decoder):
                warmup = getattr(step.runner, "warmup", None)
                if warmup is not None:
                    warmup(dims, batch_sizes)
        self.renderer = None
        if render:
            from tddfa.renderer import MeshRenderer

            triangles = np.load(repository / "face_renderer" / "1" / "triangles.npy")
            self.renderer = RenderStep(
                MeshRenderer(triangles, device=device, alpha=self.config.render_alpha)
            )

    def __call__(self, images) -> dict[str, Any]:
        """images: (B,H,W,3) uint8 RGB (or one (H,W,3) frame) -> {ENSEMBLE_OUTPUT: (B, ...)}."""
        if images.ndim == 3:
            images = images[None]
        t = {"IMAGE": images}
        self.preprocess.validate(t)
        t.update(self.preprocess.run(t))
        t.update(self.detector.run(t))
        t.update(self.roi_crop.run(t))
        t.update(self.regressor.run(t))
        t.update(self.landmark_to_vertex.run(t))
        if self.renderer is not None:
            t.update(self.bfm_decoder.run(t))
            t.update(self.renderer.run(t))
        return {name: t[name] for name in ENSEMBLE_OUTPUTS if name in t}

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.renderer.close()
