"""The whole ensemble in one process, from a built model repository, without Triton.

Runs the same step objects as the served models (tddfa.steps) on the same built files,
so tests can compare the server with it and benchmarks can measure Triton's overhead.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from tddfa.bfm import load_bfm
from tddfa.config import PipelineConfig
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
        self.preprocess = PreprocessStep(self.config)
        self.detector = NetworkStep(
            make_runner(repository / "face_detector" / "1", device), ["DETECTOR_INPUT"]
        )
        self.roi_crop = RoiCropStep(self.config)
        self.regressor = NetworkStep(
            make_runner(repository / "face_regressor" / "1", device), ["CROPS"]
        )
        bfm = load_bfm(repository / "landmark_to_vertex" / "1" / "bfm.npz")
        self.landmark_to_vertex = LandmarkToVertexStep(self.config, bfm)
        self.bfm_decoder = NetworkStep(
            make_runner(repository / "bfm_decoder" / "1", device), ["ALPHA_SHP", "ALPHA_EXP"]
        )
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
