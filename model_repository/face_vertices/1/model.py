"""Triton adapter of the face_vertices step (logic: tddfa.render.step.VerticesStep)."""

from tddfa.render.step import build_vertices_step
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        return build_vertices_step(context.model_dir)
