"""One source of truth for the pipeline's tunables.

Model configs (``parameters`` in config.pbtxt), the CLI and the in-process pipeline all
build a :class:`PipelineConfig`; no other module repeats these numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# Fixed by the published networks (docs/models.md); not tunable.
REGRESSOR_SIZE = 120  # crop side of the 3DMM regressor
NUM_PARAMS = 62  # 12 pose + 40 shape + 10 expression
NUM_SHAPE = 40
NUM_EXP = 10
NUM_LANDMARKS = 68
NUM_VERTICES = 38365  # no-neck BFM mesh
NUM_TRIANGLES = 76073
DETECTOR_MEAN_BGR = (104.0, 117.0, 123.0)
DETECTOR_STEPS = (32, 64, 128)
DETECTOR_MIN_SIZES = ((32, 64, 128), (256,), (512,))
DETECTOR_VARIANCES = (0.1, 0.2)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Tunables of the ensemble; defaults reproduce the original 3DDFA_V2 pipeline."""

    max_faces: int = 8  # K: static number of face slots per frame
    canvas_height: int = 720  # detector input canvas (frames are rescaled into it)
    canvas_width: int = 1280
    rescale_max_height: int = 720  # the original's rescale rule (docs/models.md 1)
    rescale_max_width: int = 1080
    max_image_height: int = 4096  # larger frames are refused with an error
    max_image_width: int = 4096
    min_image_size: int = 16  # smaller frames are refused (no face fits)
    pre_nms_threshold: float = 0.05
    pre_nms_top_k: int = 5000
    nms_iou_threshold: float = 0.3
    post_nms_top_k: int = 750
    score_threshold: float = 0.5
    render_alpha: float = 0.6
    # face_renderer: the side S of each face's map in the "uv" render mode, and the image of
    # the "texture" mode (a file, absolute or relative to the model's version folder; "":
    # the FFmpeg GPU demo's color.1024x1024.jpg, from render_assets.npz)
    uv_size: int = 256
    texture_image: str = ""
    # faces narrower than this (pixels) are drawn with the coarse mesh (37 % of the
    # triangles; within a grey level on average at that size); 0: always the full mesh
    render_coarse_below: float = 400.0
    # the CPU renderer: threads a frame's faces are drawn with, in horizontal bands (0: one
    # per core, at most 4). 1: a served video keeps the cores busy with the other steps and
    # the codecs, where bands only add work (57 vs 46 frames/s tracked on 2 cores); more
    # lower one frame's latency on idle cores
    render_threads: int = 1
    # Sequences (tddfa_track): the detector runs on the first frame, every N frames (0 =
    # only when a track is lost) and when a track is lost; a tracked crop smaller than
    # this area (px^2, the original's rule) is lost; IoU that matches a detection to a track.
    track_detect_every: int = 10
    track_min_roi_area: float = 2020.0
    track_iou_threshold: float = 0.3
    # A tracked crop whose best FaceBoxes score falls below this holds no face any more.
    track_min_face_score: float = 0.5
    # How far a re-detection moves a tracked face's box towards the detector's (0: never,
    # 1: to the detection at once); the box follows the smoothed landmarks in between.
    track_box_blend: float = 0.2
    # Lost tracks are remembered this many frames; a detection near where one was expected
    # and with its identity (shape distance <= track_identity_distance, tddfa.identity)
    # takes its id back. track_appearance false: match by overlap alone.
    track_keep_lost: int = 30
    track_appearance: bool = True
    track_identity_distance: float = 0.1
    # Smoothing of tracked faces (tddfa.smoothing): false gives the regressor's raw outputs.
    # Its parts: hold the identity, filter pose and expression, use the image motion; the
    # filter's noise model in pixels of the 120x120 crop: the regressor's noise, the change
    # of a face's velocity per frame, the image motion's error; innovations beyond
    # smoothing_gate standard deviations raise the gain.
    smoothing: bool = True
    smoothing_identity: bool = True
    smoothing_filter: bool = True
    smoothing_motion: bool = True
    smoothing_measurement_noise: float = 0.4
    smoothing_acceleration_noise: float = 0.07
    smoothing_motion_noise: float = 0.07
    smoothing_gate: float = 2.5

    def __post_init__(self) -> None:
        """Refuse values no pipeline can run with, naming the option and the fix."""
        counts = (
            "max_faces",
            "canvas_height",
            "canvas_width",
            "rescale_max_height",
            "rescale_max_width",
            "max_image_height",
            "max_image_width",
            "min_image_size",
            "pre_nms_top_k",
            "post_nms_top_k",
        )
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        unit = (
            "pre_nms_threshold",
            "nms_iou_threshold",
            "score_threshold",
            "render_alpha",
            "track_box_blend",
        )
        for name in unit:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.track_keep_lost < 0:
            raise ValueError(f"track_keep_lost must be >= 0 frames, got {self.track_keep_lost}")
        if not self.track_identity_distance > 0:
            raise ValueError(
                f"track_identity_distance must be > 0, got {self.track_identity_distance}"
            )
        if self.min_image_size > min(self.max_image_height, self.max_image_width):
            raise ValueError(
                f"min_image_size {self.min_image_size} exceeds the largest image allowed "
                f"({self.max_image_height}x{self.max_image_width})"
            )

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> PipelineConfig:
        """Build from Triton ``parameters`` ({name: {"string_value": ...}}) or plain values.

        Unknown names are ignored so each model's config lists only what it uses.
        """
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in parameters:
                continue
            raw = parameters[field.name]
            if isinstance(raw, Mapping):
                raw = raw["string_value"]
            values[field.name] = parse_setting(field.name, raw)
        return cls(**values)

    def to_parameters(self) -> dict[str, str]:
        """The config as Triton ``parameters`` string values."""
        return {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)}


def parse_setting(name: str, raw: Any, what: str = "parameter") -> Any:
    """``raw`` (a string, or a JSON value) as the type of the config field ``name``."""
    kind = type(PipelineConfig.__dataclass_fields__[name].default)
    if kind is bool and not isinstance(raw, bool):
        lowered = str(raw).strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"{what} {name} must be true or false, got {raw!r}")
        return lowered in ("true", "1", "yes", "on")
    if kind is not bool and isinstance(raw, bool):
        raise ValueError(f"{what} {name} must be a {kind.__name__}, got {raw!r}")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {name} must be a {kind.__name__}, got {raw!r}") from None
