"""Triton adapter of the face_aligner step (logic: tddfa.aligner). The regressor runs in-process
from 1/face_regressor/, or through BLS in the served face_regressor model when the config
names it (tddfa_triton.bls)."""

from tddfa.aligner import Aligner
from tddfa.bfm import load_bfm
from tddfa.config import REGRESSOR_SIZE
from tddfa.steps import AlignerStep
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        cfg = context.config
        crops = (cfg.max_faces, 3, REGRESSOR_SIZE, REGRESSOR_SIZE)
        runner = context.network("face_regressor", {"CROPS": crops})
        return AlignerStep(Aligner(cfg, runner, load_bfm(context.model_dir / "bfm.npz")))
