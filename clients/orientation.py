"""Display orientation of video frames: the stream's display matrix, applied to the pixels.

Cameras store pixels as the sensor saw them and record how to show them: a phone video
held upright is stored sideways with a display matrix (MP4 ``tkhd`` matrix, FFmpeg's
``DISPLAYMATRIX`` side data) saying "rotate by 90 degrees". The clients turn every frame
into its display orientation *before* inference, so boxes, landmarks and pose are where a
viewer sees them, and write the output upright with no rotation tag (players that ignore
the tag show it right too). Still images do the same with EXIF Orientation
(``PIL.ImageOps.exif_transpose``, in :mod:`tddfa_clients.image`).

The display matrix (libavutil/display.h) maps a source point ``(p, q)`` (x right, y down)
to ``(p', q') = (p, q) @ [[a, b], [c, d]]`` (plus a translation), with ``a, b, c, d`` in
16.16 fixed point. Only the eight axis-aligned cases (rotations by multiples of 90 degrees,
optionally mirrored) are pixel-exact; any other angle is reported and ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import struct
from typing import Any

LOG = logging.getLogger(__name__)

_FIXED_ONE = float(1 << 16)


@dataclasses.dataclass(frozen=True)
class Orientation:
    """An axis-aligned display transform: ``(p', q') = (p, q) @ [[a, b], [c, d]]`` with
    entries in {-1, 0, 1}. ``Orientation()`` is the identity."""

    a: int = 1
    b: int = 0
    c: int = 0
    d: int = 1

    @property
    def is_identity(self) -> bool:
        return (self.a, self.b, self.c, self.d) == (1, 0, 0, 1)

    @property
    def swaps_axes(self) -> bool:
        """True for quarter turns: display width and height are the stored height and width."""
        return self.a == 0

    def display_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) as displayed, for a stored ``width`` x ``height`` frame."""
        return (height, width) if self.swaps_axes else (width, height)

    @property
    def degrees(self) -> int:
        """Counterclockwise display rotation in degrees, in [0, 360)."""
        return round(math.degrees(math.atan2(-self.b, self.a))) % 360

    @property
    def mirrored(self) -> bool:
        return self.a * self.d - self.b * self.c < 0

    def describe(self) -> str:
        turn = f"rotated {self.degrees} degrees counterclockwise"
        return f"{turn}, mirrored" if self.mirrored else turn

    def apply(self, image: Any) -> Any:
        """``image`` (H, W, C) in display orientation: a C-contiguous array of the same kind
        (numpy, or CuPy for device frames; slicing and transposes only, no interpolation)."""
        if self.is_identity:
            return image
        if self.swaps_axes:  # p' = c q, q' = b p: rows become columns
            image = image.transpose(1, 0, 2)
            flip_x, flip_y = self.c < 0, self.b < 0
        else:  # p' = a p, q' = d q
            flip_x, flip_y = self.a < 0, self.d < 0
        if flip_x:
            image = image[:, ::-1]
        if flip_y:
            image = image[::-1]
        return _xp(image).ascontiguousarray(image)


IDENTITY = Orientation()


def _xp(array: Any) -> Any:
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy
    import numpy

    return numpy


def from_display_matrix(matrix: bytes | None) -> Orientation:
    """The orientation of a 36-byte display matrix (nine little-endian int32); identity for
    None, for a degenerate matrix, and (with a warning) for angles that are not a multiple
    of 90 degrees."""
    if not matrix:
        return IDENTITY
    if len(matrix) < 36:
        LOG.warning("ignoring a display matrix of %d bytes (36 expected)", len(matrix))
        return IDENTITY
    values = struct.unpack("<9i", bytes(matrix[:36]))
    a, b, c, d = (values[i] / _FIXED_ONE for i in (0, 1, 3, 4))
    scale_x, scale_y = math.hypot(a, c), math.hypot(b, d)
    if scale_x == 0 or scale_y == 0:
        return IDENTITY
    a, c, b, d = a / scale_x, c / scale_x, b / scale_y, d / scale_y
    rounded = [round(v) for v in (a, b, c, d)]
    if any(abs(v - r) > 1e-3 for v, r in zip((a, b, c, d), rounded, strict=True)):
        angle = math.degrees(math.atan2(-b, a)) % 360
        LOG.warning(
            "the video asks to be shown rotated by %.1f degrees: only multiples of 90 are "
            "applied; frames are processed as stored",
            angle,
        )
        return IDENTITY
    return Orientation(*rounded)


def frame_orientation(frame: Any) -> Orientation:
    """The orientation a decoded PyAV ``VideoFrame`` asks for (its DISPLAYMATRIX side data,
    which FFmpeg copies from the stream to every frame)."""
    for side_data in getattr(frame, "side_data", ()) or ():
        if getattr(side_data.type, "name", "") == "DISPLAYMATRIX":
            return from_display_matrix(bytes(side_data))
    return IDENTITY
