"""From face boxes to 3DMM parameters, pose, landmarks and the model->image transform.

ROI box (docs/models.md 3) -> 120x120 crop -> MobileNetV1 regressor -> de-normalised params
(docs/models.md 2, 4). The stateless ``face_aligner`` model and the sequence model
``face_tracker`` both run it; they differ only in where the ROI boxes come from
(detections, or the previous frame's landmarks).

On the CPU the regressor runs on the filled face slots only (one face costs one crop, not
K); on the GPU it runs on all K slots of every frame so that its shapes stay static (CUDA
graphs) and nothing is copied to the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tddfa import params, roi
from tddfa.bfm import BFM
from tddfa.config import NUM_EXP, NUM_PARAMS, NUM_SHAPE, REGRESSOR_SIZE, PipelineConfig
from tddfa.face_slots import run_filled_slots
from tddfa.graph import STEPS
from tddfa.xp import get_xp

# What :meth:`Aligner.align` returns, per frame and face slot (empty slots are zeros): the
# face_aligner step's outputs.
ALIGNED = STEPS["face_aligner"].outputs


def slot_mask(counts: Any, max_faces: int) -> Any:
    """(B,) face counts -> (B, K) bool, True for filled slots."""
    xp = get_xp(counts)
    return xp.arange(max_faces)[None, :] < counts.reshape(-1, 1)


class Aligner:
    """``Aligner(config, regressor, bfm).align(images, rois, counts)``.

    ``regressor`` is a tddfa.runners runner taking CROPS (N, F, 3, 120, 120) float32 RGB
    0..255 and giving PARAMS_NORM (N, F, 62).
    """

    def __init__(self, config: PipelineConfig, regressor, bfm: BFM):
        self.config = config
        self.regressor = regressor
        self.bfm = bfm

    def crops(self, images: Any, rois: Any, counts: Any) -> Any:
        """(B,H,W,3) uint8 frames, (B,K,4) ROI boxes, (B,) counts -> (B,K,3,120,120) float32."""
        xp = get_xp(images)
        if xp is not np:
            from tddfa import gpu_kernels

            return gpu_kernels.face_crops(images, rois, counts)  # one launch
        out = np.zeros((*rois.shape[:2], 3, REGRESSOR_SIZE, REGRESSOR_SIZE), np.float32)
        for image, frame_rois, count, crops in zip(images, rois, counts, out, strict=True):
            roi.crop_and_resize(image, frame_rois, count=int(count), out=crops)  # in place
        return out

    def regress(self, crops: Any, counts: Any) -> Any:
        """(B,K,3,120,120) crops -> (B,K,62) normalised params (zeros in empty slots): the
        filled slots only on the CPU, all K (static shapes, no host sync) on the GPU."""
        return run_filled_slots(self.regressor, {"CROPS": crops}, counts)["PARAMS_NORM"]

    def parameters(
        self, params_norm: Any, rois: Any, counts: Any, names: tuple[str, ...] = ALIGNED
    ) -> dict[str, Any]:
        """(B,K,62) normalised params + (B,K,4) ROI boxes -> the :data:`ALIGNED` outputs
        (on the CPU only those in ``names``: the tracker reads four of the six)."""
        xp = get_xp(params_norm)
        if xp is not np:  # one fused kernel instead of ~100 launch-bound tiny ones
            from tddfa import gpu_params

            outputs = gpu_params.face_parameters(params_norm, rois, counts, self.bfm)
            return {name: outputs[name] for name in names}
        batch, k = params_norm.shape[:2]
        flat = params.denormalize(
            params_norm.reshape(batch * k, NUM_PARAMS),
            xp.asarray(self.bfm.param_mean),
            xp.asarray(self.bfm.param_std),
        )
        flat_rois = rois.reshape(batch * k, 4)
        transform = params.model_to_image(flat, flat_rois)
        compute = {
            "PARAMS": lambda: flat,
            "POSE": lambda: params.pose_degrees(flat),
            "LANDMARKS": lambda: params.apply_transform(
                transform, params.landmark_vertices(flat, self.bfm)
            ),
            "ALPHA_SHP": lambda: flat[:, params.POSE_END : params.POSE_END + NUM_SHAPE],
            "ALPHA_EXP": lambda: flat[:, params.SHAPE_END : params.SHAPE_END + NUM_EXP],
            "TRANSFORM": lambda: transform,
        }
        mask = slot_mask(counts, k).reshape(batch * k)
        result = {}
        for name in names:
            array = compute[name]()
            array = xp.where(mask.reshape((-1,) + (1,) * (array.ndim - 1)), array, 0)
            result[name] = array.astype(xp.float32, copy=False).reshape(
                (batch, k) + array.shape[1:]
            )
        return result

    def align(self, images: Any, rois: Any, counts: Any) -> dict[str, Any]:
        """Crop, regress and de-normalise every filled slot.

        Args:
            images: (B, H, W, 3) uint8 RGB frames of one size.
            rois: (B, K, 4) float32 ROI boxes (sx, sy, ex, ey) in image pixels.
            counts: (B,) int32 filled slots per frame (slots past the count are ignored).

        Returns:
            {name: array} for :data:`ALIGNED`: PARAMS (B,K,62), POSE (B,K,3) degrees,
            LANDMARKS (B,K,3,68), ALPHA_SHP (B,K,40), ALPHA_EXP (B,K,10), TRANSFORM
            (B,K,3,4); zeros in empty slots.
        """
        crops = self.crops(images, rois, counts)
        return self.parameters(self.regress(crops, counts), rois, counts)

    def align_boxes(self, images: Any, boxes: Any, counts: Any) -> dict[str, Any]:
        """:meth:`align` with the ROI boxes of detections (B,K,5) (docs/models.md 3)."""
        batch, k = boxes.shape[:2]
        rois = roi.roi_from_box(boxes.reshape(batch * k, -1)).reshape(batch, k, 4)
        xp = get_xp(rois)
        rois = xp.where(slot_mask(counts, k)[..., None], rois, 0)
        return self.align(images, rois, counts)
