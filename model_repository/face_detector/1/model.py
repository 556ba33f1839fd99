"""Triton adapter of the face_detector step (logic: tddfa.detector). The onnxruntime and
tensorrt flavours serve the same contract natively from one ONNX graph (no model.py)."""

from tddfa.steps import DetectorStep
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        return DetectorStep(context.detector())
