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

# onnxruntime threads of the tracker's networks on the CPU. A tracked frame runs them on one
# 120x120 crop a face (the regressor, the face check): waking a second thread for each small
# layer cost more than it saved (2-core box, served: 14.7-15.5 ms of CPU a tracked frame on
# two threads, 12.2 on one, and faster frames), and the cores are the renderer's and the
# video codecs' too. The full-frame detection every few frames runs on one thread as well.
NETWORK_THREADS = 1


class TritonPythonModel(SequenceModel):
    def build_step(self, context):
        cfg = context.config
        regressor = context.network(
            "face_regressor",
            {"CROPS": (cfg.max_faces, 3, REGRESSOR_SIZE, REGRESSOR_SIZE)},
            threads=NETWORK_THREADS,
        )
        aligner = Aligner(cfg, regressor, load_bfm(context.model_dir / "bfm.npz"))
        store = SequenceStore(idle_timeout=self.idle_timeout_seconds(context))
        return TrackerStep(Tracker(cfg, context.detector(threads=NETWORK_THREADS), aligner), store)
