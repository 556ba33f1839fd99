"""The ensemble's steps as plain objects: named arrays in, named arrays out.

Each class is what one Triton model of the `tddfa` ensemble runs (DESIGN.md); the
Triton adapter (tddfa_triton) and the in-process pipeline (tddfa.pipeline) both use
them, so the served and the in-process results come from the same code. All arrays
carry a leading batch axis B (frames); K is the number of face slots.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tddfa import detection, params, preprocess, roi
from tddfa.bfm import BFM
from tddfa.config import NUM_EXP, NUM_SHAPE, PipelineConfig
from tddfa.priors import prior_boxes
from tddfa.xp import get_xp, to_numpy

Arrays = Mapping[str, Any]
LOG = logging.getLogger(__name__)


def _on_gpu(xp) -> bool:
    return xp is not np


class _FusedKernels:
    """The fused CuPy kernels of :mod:`tddfa.gpu_kernels`, or None after one failed to build
    (the generic CuPy code then runs: slower, same results)."""

    failed = False

    @classmethod
    def get(cls):
        if cls.failed:
            return None
        from tddfa import gpu_kernels

        return gpu_kernels

    @classmethod
    def disable(cls, exc: Exception) -> None:
        LOG.warning("fused GPU kernels unavailable (%r): using the generic CuPy path", exc)
        cls.failed = True


def _require_rank(inputs: Arrays, ranks: Mapping[str, int]) -> None:
    for name, rank in ranks.items():
        if inputs[name].ndim != rank:
            raise ValueError(
                f"{name} must have {rank} dimensions including the batch, "
                f"got shape {tuple(inputs[name].shape)}"
            )


def _face_mask(face_count, max_faces: int):
    """(B, 1) int32 counts -> (B, K) bool, True for filled face slots."""
    xp = get_xp(face_count)
    return xp.arange(max_faces)[None, :] < face_count.reshape(-1, 1)


class PreprocessStep:
    """IMAGE (B,H,W,3) uint8 RGB -> DETECTOR_INPUT (B,3,Hc,Wc) float32, SCALE (B,1) float32."""

    def __init__(self, config: PipelineConfig):
        self.config = config

    def validate(self, inputs: Arrays) -> None:
        image = inputs["IMAGE"]
        if image.ndim != 4:
            raise ValueError(
                f"IMAGE must be uint8 (H, W, 3) RGB with a batch axis, got {image.dtype} "
                f"{tuple(image.shape)}: send one frame as shape (1, H, W, 3)"
            )
        for frame in image:
            preprocess.validate_image(frame, self.config)

    def run(self, inputs: Arrays) -> dict[str, Any]:
        xp = get_xp(inputs["IMAGE"])
        kernels = _FusedKernels.get() if _on_gpu(xp) else None
        if kernels is not None:  # one kernel for the whole batch (frames share a size)
            try:
                canvases, scale = kernels.detector_canvas(inputs["IMAGE"], self.config)
            except Exception as exc:  # noqa: BLE001 - a kernel that fails to compile
                _FusedKernels.disable(exc)
            else:
                batch = canvases.shape[0]
                return {
                    "DETECTOR_INPUT": canvases,
                    "SCALE": xp.full((batch, 1), scale, dtype=xp.float32),
                }
        canvases, scales = [], []
        for frame in inputs["IMAGE"]:
            canvas, scale = preprocess.to_detector_canvas(frame, self.config)
            canvases.append(canvas)
            scales.append(scale)
        return {
            "DETECTOR_INPUT": xp.stack(canvases),
            "SCALE": xp.asarray(scales, dtype=xp.float32).reshape(-1, 1),
        }


class RoiCropStep:
    """Detections -> K best face boxes, their ROI boxes and 120x120 crops.

    IMAGE (B,H,W,3) uint8, LOC (B,P,4), CONF (B,P,2), SCALE (B,1) ->
    FACE_BOXES (B,K,5), FACE_COUNT (B,1) int32 (and NUM_FACES, the same, for later
    steps), ROI_BOXES (B,K,4), CROPS (B,K,3,120,120).
    """

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.priors = prior_boxes(config.canvas_height, config.canvas_width)
        self._device_priors = {}  # one copy per array module (numpy / CuPy), made once

    def validate(self, inputs: Arrays) -> None:
        _require_rank(inputs, {"IMAGE": 4, "LOC": 3, "CONF": 3, "SCALE": 2})
        if inputs["LOC"].shape[1] != len(self.priors):
            raise ValueError(
                f"LOC has {inputs['LOC'].shape[1]} priors but the "
                f"{self.config.canvas_height}x{self.config.canvas_width} canvas has "
                f"{len(self.priors)}: face_detector and roi_crop must use the same canvas"
            )

    def run(self, inputs: Arrays) -> dict[str, Any]:
        xp = get_xp(inputs["IMAGE"])
        kernels = _FusedKernels.get() if _on_gpu(xp) else None
        if kernels is not None:
            try:
                return self._run_gpu(inputs, xp, kernels)
            except Exception as exc:  # noqa: BLE001 - a kernel that fails to compile
                if isinstance(exc, ValueError):
                    raise
                _FusedKernels.disable(exc)
        priors = self._device_priors.get(xp)
        if priors is None:
            priors = self._device_priors[xp] = xp.asarray(self.priors)
        boxes, counts, rois, crops = [], [], [], []
        for image, loc, conf, scale in zip(
            inputs["IMAGE"], inputs["LOC"], inputs["CONF"], inputs["SCALE"], strict=True
        ):
            face_boxes, count = detection.select_faces(
                loc, conf, priors, float(scale[0]), self.config
            )
            face_rois = roi.roi_from_box(face_boxes[:, :4])
            face_rois[count:] = 0
            face_crops = roi.crop_and_resize(image, face_rois, count=count)
            boxes.append(face_boxes)
            counts.append(count)
            rois.append(face_rois)
            crops.append(face_crops)
        face_count = xp.asarray(counts, dtype=xp.int32).reshape(-1, 1)
        return {
            "FACE_BOXES": xp.stack(boxes).astype(xp.float32, copy=False),
            "FACE_COUNT": face_count,
            "NUM_FACES": face_count,
            "ROI_BOXES": xp.stack(rois).astype(xp.float32, copy=False),
            "CROPS": xp.stack(crops).astype(xp.float32, copy=False),
        }

    def _run_gpu(self, inputs: Arrays, xp, kernels) -> dict[str, Any]:
        """GPU batch: the few candidates above the score threshold go to the host for
        decoding and NMS (one transfer for the batch, instead of some thirty small kernels
        and three synchronisations per frame); the crops are one fused kernel."""
        cfg, k = self.config, self.config.max_faces
        batch = inputs["IMAGE"].shape[0]
        scores = inputs["CONF"][:, :, 1]
        threshold = max(cfg.pre_nms_threshold, cfg.score_threshold)
        frame_index, prior_index = xp.nonzero(scores > threshold)
        candidates = xp.concatenate(
            [inputs["LOC"][frame_index, prior_index], scores[frame_index, prior_index, None]],
            axis=1,
        )
        candidates, frame_index, prior_index, scale = (
            to_numpy(a) for a in (candidates, frame_index, prior_index, inputs["SCALE"])
        )
        boxes = np.zeros((batch, k, 5), np.float32)
        rois = np.zeros((batch, k, 4), np.float32)
        counts = np.zeros((batch, 1), np.int32)
        for b in range(batch):
            rows = frame_index == b
            conf = np.zeros((int(rows.sum()), 2), np.float32)
            conf[:, 1] = candidates[rows, 4]
            boxes[b], count = detection.select_faces(
                candidates[rows, :4], conf, self.priors[prior_index[rows]], float(scale[b, 0]), cfg
            )
            rois[b, :count] = roi.roi_from_box(boxes[b, :count, :4])
            counts[b] = count
        face_count = xp.asarray(counts)
        return {
            "FACE_BOXES": xp.asarray(boxes),
            "FACE_COUNT": face_count,
            "NUM_FACES": face_count,
            "ROI_BOXES": xp.asarray(rois),
            "CROPS": kernels.face_crops(inputs["IMAGE"], rois),
        }


class LandmarkToVertexStep:
    """Regressor output -> 62 params, pose, 68 landmarks, BFM coefficients, and the
    per-face model->image transform (MODELS.md 4).

    PARAMS_NORM (B,K,62), ROI_BOXES (B,K,4), NUM_FACES (B,1) -> PARAMS (B,K,62),
    POSE (B,K,3) degrees, LANDMARKS (B,K,3,68), ALPHA_SHP (B,K,40), ALPHA_EXP (B,K,10),
    TRANSFORM (B,K,3,4). Empty face slots are zeros.
    """

    def __init__(self, config: PipelineConfig, bfm: BFM):
        self.config = config
        self.bfm = bfm

    def validate(self, inputs: Arrays) -> None:
        _require_rank(inputs, {"PARAMS_NORM": 3, "ROI_BOXES": 3, "NUM_FACES": 2})

    def run(self, inputs: Arrays) -> dict[str, Any]:
        xp = get_xp(inputs["PARAMS_NORM"])
        if _on_gpu(xp):
            # (B, K, 62) numbers: some hundred tiny kernels on the GPU (~5 ms, launch-bound)
            # against ~0.3 ms of numpy; only these small tensors cross, never pixels
            names = ("PARAMS_NORM", "ROI_BOXES", "NUM_FACES")
            host = self.run({name: to_numpy(inputs[name]) for name in names})
            return {name: xp.asarray(array) for name, array in host.items()}
        norm = inputs["PARAMS_NORM"]
        batch, k = norm.shape[:2]
        flat_params = params.denormalize(
            norm.reshape(batch * k, -1),
            xp.asarray(self.bfm.param_mean),
            xp.asarray(self.bfm.param_std),
        )
        flat_rois = inputs["ROI_BOXES"].reshape(batch * k, 4)
        mask = _face_mask(inputs["NUM_FACES"], k).reshape(batch * k)
        outputs = {
            "PARAMS": flat_params,
            "POSE": params.pose_degrees(flat_params),
            "LANDMARKS": params.landmarks(flat_params, flat_rois, self.bfm),
            "ALPHA_SHP": flat_params[:, 12 : 12 + NUM_SHAPE],
            "ALPHA_EXP": flat_params[:, 12 + NUM_SHAPE : 12 + NUM_SHAPE + NUM_EXP],
            "TRANSFORM": params.model_to_image(flat_params, flat_rois),
        }
        result = {}
        for name, array in outputs.items():
            array = xp.where(mask.reshape((-1,) + (1,) * (array.ndim - 1)), array, 0)
            result[name] = array.astype(xp.float32, copy=False).reshape(
                (batch, k) + array.shape[1:]
            )
        return result


class NetworkStep:
    """One of the three networks, run by a tddfa.runners runner (python flavour)."""

    def __init__(self, runner, input_names: Sequence[str]):
        self.runner = runner
        self.input_names = tuple(input_names)

    def describe(self) -> str:
        return type(self.runner).__name__

    def validate(self, inputs: Arrays) -> None:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"missing inputs {sorted(missing)}")

    def run(self, inputs: Arrays) -> dict[str, Any]:
        return self.runner.run({name: inputs[name] for name in self.input_names})


class RenderStep:
    """Draw every face's mesh over its frame.

    IMAGE (B,H,W,3) uint8, MODEL_VERTICES (B,K,3,N), TRANSFORM (B,K,3,4), NUM_FACES (B,1)
    -> RENDERED (B,H,W,3) uint8, VERTICES (B,K,3,N) image space (empty slots zero).
    """

    def __init__(self, renderer):
        self.renderer = renderer

    def validate(self, inputs: Arrays) -> None:
        _require_rank(inputs, {"IMAGE": 4, "MODEL_VERTICES": 4, "TRANSFORM": 4, "NUM_FACES": 2})

    def run(self, inputs: Arrays) -> dict[str, Any]:
        xp = get_xp(inputs["MODEL_VERTICES"])
        vertices = xp.zeros_like(inputs["MODEL_VERTICES"])
        counts = to_numpy(inputs["NUM_FACES"]).reshape(-1)  # one transfer for the batch
        rendered = []
        for b, frame in enumerate(inputs["IMAGE"]):
            count = int(counts[b])
            if count:
                vertices[b, :count] = params.apply_transform(
                    inputs["TRANSFORM"][b, :count], inputs["MODEL_VERTICES"][b, :count]
                )
            rendered.append(self.renderer.render(frame, vertices[b, :count], count))
        return {"RENDERED": xp.stack(rendered), "VERTICES": vertices}
