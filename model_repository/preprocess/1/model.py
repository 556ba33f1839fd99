"""Triton adapter of the preprocess step (logic: tddfa.preprocess)."""

from tddfa.steps import PreprocessStep
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        return PreprocessStep(context.config)
