"""Triton adapter of the face_tracker sequence step (logic: tddfa.tracking). The networks run
in-process from 1/face_detector/, 1/face_regressor/, or through BLS in the served
face_detector / face_regressor models when the config names them (tddfa_triton.bls)."""

from tddfa.aligner import Aligner
from tddfa.bfm import load_bfm
from tddfa.config import REGRESSOR_SIZE
from tddfa.sequence_store import SequenceStore
from tddfa.steps import TrackerStep
from tddfa.tracking import Tracker
from tddfa_triton import SequenceModel


class TritonPythonModel(SequenceModel):
    def build_step(self, context):
        cfg = context.config
        regressor = context.network(
            "face_regressor", {"CROPS": (cfg.max_faces, 3, REGRESSOR_SIZE, REGRESSOR_SIZE)}
        )
        aligner = Aligner(cfg, regressor, load_bfm(context.model_dir / "bfm.npz"))
        store = SequenceStore(idle_timeout=self.idle_timeout_seconds(context))
        return TrackerStep(Tracker(cfg, context.detector(), aligner), store)
