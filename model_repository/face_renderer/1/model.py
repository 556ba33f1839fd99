"""Triton adapter of the face_renderer step (logic: tddfa.render.step.RenderStep)."""

from tddfa.render.step import build_render_step
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        return build_render_step(context.model_dir, context.device, context.config)
