"""Frame -> detector input: validation, the original rescale rule, the fixed canvas.

The detector sees every frame on a canvas of a fixed size (``cfg.canvas_height`` x
``cfg.canvas_width``) so the served network and its prior boxes have static shapes.
The frame is rescaled exactly as the original 3DDFA_V2 FaceBoxes wrapper does
(docs/models.md 1), placed in the top-left corner, and the rest is filled with the detector
mean colour, which the network's own mean subtraction turns into zeros.
"""

from __future__ import annotations

from typing import Any

from tddfa.config import DETECTOR_MEAN_BGR, PipelineConfig
from tddfa.resize import resize_bilinear_u8
from tddfa.xp import get_xp

# The canvas is RGB; the detector's mean is given per BGR channel.
DETECTOR_MEAN_RGB = tuple(reversed(DETECTOR_MEAN_BGR))


def _describe(image: Any) -> str:
    return f"{image.dtype} {tuple(int(d) for d in image.shape)}"


def validate_image(image: Any, cfg: PipelineConfig) -> None:
    """Check that ``image`` is a frame the pipeline accepts.

    Args:
        image: expected (H, W, 3) uint8 RGB, numpy or cupy.
        cfg: limits ``min_image_size``, ``max_image_height``, ``max_image_width``.

    Raises:
        ValueError: naming the problem and the fix (wrong type, dtype, rank, channel
            count, an empty, too small or too large frame).
    """
    if not hasattr(image, "dtype") or not hasattr(image, "shape"):
        raise ValueError(
            f"IMAGE must be a uint8 (H, W, 3) RGB array, got {type(image).__name__}: "
            "pass a numpy (or CuPy) array"
        )
    expected = "IMAGE must be uint8 (H, W, 3) RGB"
    if image.dtype.name != "uint8":
        raise ValueError(
            f"{expected}, got {_describe(image)}: convert 8-bit pixels with "
            "image.astype(uint8) (scale floats in 0..1 by 255 first)"
        )
    if image.ndim != 3:
        raise ValueError(
            f"{expected}, got {_describe(image)}: send one frame per request as (H, W, 3); "
            "expand grey images to 3 channels"
        )
    height, width, channels = (int(d) for d in image.shape)
    if channels == 4:
        raise ValueError(
            f"{expected}, got {_describe(image)} (4 channels, RGBA?): drop the alpha "
            "channel, e.g. image[..., :3]"
        )
    if channels != 3:
        raise ValueError(
            f"{expected}, got {_describe(image)} ({channels} channels): send RGB with "
            "the channels last"
        )
    if height == 0 or width == 0:
        raise ValueError(
            f"{expected}, got an empty image {_describe(image)}: send a non-empty frame"
        )
    if height < cfg.min_image_size or width < cfg.min_image_size:
        raise ValueError(
            f"IMAGE is {height}x{width} (HxW), smaller than the minimum "
            f"{cfg.min_image_size}x{cfg.min_image_size} (min_image_size): no face fits; "
            "send a larger frame"
        )
    if height > cfg.max_image_height or width > cfg.max_image_width:
        raise ValueError(
            f"IMAGE is {height}x{width} (HxW), larger than the limit "
            f"{cfg.max_image_height}x{cfg.max_image_width} (max_image_height x "
            "max_image_width): downscale the frame or rebuild the repository with a "
            "larger limit"
        )


def detector_scale(height: int, width: int, cfg: PipelineConfig) -> float:
    """The factor applied to a ``height`` x ``width`` frame before detection.

    First the original rule (at most ``rescale_max_height`` rows, then at most
    ``rescale_max_width`` columns; never enlarged), computed with the same float
    operations as the original so the resized size matches it exactly; then, if the
    result still exceeds the canvas, shrunk further to fit it.
    """
    scale = 1.0
    if height > cfg.rescale_max_height:
        scale = cfg.rescale_max_height / height
    if width * scale > cfg.rescale_max_width:
        scale *= cfg.rescale_max_width / (width * scale)
    if int(height * scale) > cfg.canvas_height:
        scale = cfg.canvas_height / height
    if int(width * scale) > cfg.canvas_width:
        scale = cfg.canvas_width / width
    return scale


def resized_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(rows, cols) of the rescaled frame: truncated, as the original computes them."""
    return max(1, int(height * scale)), max(1, int(width * scale))


def to_detector_canvas(image: Any, cfg: PipelineConfig) -> tuple[Any, float]:
    """Rescale a frame into the detector canvas.

    Args:
        image: (H, W, 3) uint8 RGB, numpy or cupy (already validated).
        cfg: canvas size and rescale limits.

    Returns:
        ``(canvas, scale)``: canvas (3, canvas_height, canvas_width) float32 RGB 0..255
        with the rescaled frame (bilinear, the original's ``cv2.resize`` INTER_LINEAR
        uint8 arithmetic and truncated destination size) in the top-left corner and the detector mean
        elsewhere; ``scale`` the factor that detections are divided by.
    """
    xp = get_xp(image)
    height, width = int(image.shape[0]), int(image.shape[1])
    scale = detector_scale(height, width, cfg)
    out_h, out_w = resized_size(height, width, scale)
    if (out_h, out_w) == (height, width):
        resized = image
    else:
        resized = resize_bilinear_u8(image, out_h, out_w)
    canvas = xp.empty((3, cfg.canvas_height, cfg.canvas_width), dtype=xp.float32)
    canvas[...] = xp.asarray(DETECTOR_MEAN_RGB, dtype=xp.float32)[:, None, None]
    canvas[:, :out_h, :out_w] = resized.transpose(2, 0, 1)  # uint8 -> float32 on assignment
    return canvas, scale
