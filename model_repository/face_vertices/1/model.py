"""Triton adapter of the face_vertices step (logic: tddfa.bfm.DenseDecoder)."""

from tddfa.bfm import DenseDecoder, load_bfm
from tddfa.steps import VerticesStep
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        return VerticesStep(DenseDecoder(load_bfm(context.model_dir / "bfm.npz")))
