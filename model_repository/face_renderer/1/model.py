"""Triton adapter of the face_renderer step (logic: tddfa.renderer)."""

from tddfa.bfm import DenseDecoder, load_bfm
from tddfa.renderer import MeshRenderer
from tddfa.steps import RenderStep
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        bfm = load_bfm(context.model_dir / "bfm.npz")
        renderer = MeshRenderer(bfm.tri, device=context.device, alpha=context.config.render_alpha)
        return RenderStep(renderer, DenseDecoder(bfm))
