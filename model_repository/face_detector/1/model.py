"""Triton adapter of the face_detector network, python flavour (runner choice: tddfa.runners)."""

from tddfa.runners import make_runner
from tddfa.steps import NetworkStep
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        return NetworkStep(make_runner(context.model_dir, context.device), context.input_names)
