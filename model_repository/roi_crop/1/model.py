"""Triton adapter of the roi_crop step (logic: tddfa.detection, tddfa.roi)."""

from tddfa.steps import RoiCropStep
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        return RoiCropStep(context.config)
