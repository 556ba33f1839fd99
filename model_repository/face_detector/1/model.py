"""Triton adapter of the face_detector step (logic: tddfa.detector)."""

from tddfa.detector import Detector
from tddfa.steps import DetectorStep
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        cfg = context.config
        runner = context.network(
            "face_detector", {"DETECTOR_INPUT": (3, cfg.canvas_height, cfg.canvas_width)}
        )
        return DetectorStep(Detector(cfg, runner))
