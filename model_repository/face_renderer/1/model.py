"""Triton adapter of the face_renderer step (logic: tddfa.renderer)."""

import numpy as np

from tddfa.renderer import MeshRenderer
from tddfa.steps import RenderStep
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        triangles = np.load(context.model_dir / "triangles.npy")
        renderer = MeshRenderer(triangles, device=context.device, alpha=context.config.render_alpha)
        return RenderStep(renderer)
