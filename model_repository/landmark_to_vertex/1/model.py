"""Triton adapter of the landmark_to_vertex step (logic: tddfa.params)."""

from tddfa.bfm import load_bfm
from tddfa.steps import LandmarkToVertexStep
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        return LandmarkToVertexStep(context.config, load_bfm(context.model_dir / "bfm.npz"))
