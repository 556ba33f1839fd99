"""Where exported meshes sit: the coordinate frames of ``--mesh`` files and the way back.

Every mesh the clients export (``tddfa image|video|batch --mesh``) is in one of two frames:

``upright`` (the default): glTF's frame, right-handed, +Y up, +Z towards the viewer, in
metres. The picture is the plane z = 0 seen from +Z, centred on the origin, at
1 pixel = 1 millimetre; a face lies in front of it (its nearest-to-the-back point at z = 0,
as in ``VERTICES``). A glTF viewer, Blender or MeshLab opens the faces upright, where they
are in the picture. From image pixels (x right, y down, z towards the camera, the
``VERTICES`` output) of a W x H picture::

    X = (x - W / 2) / 1000,   Y = (H / 2 - y) / 1000,   Z = z / 1000

and back::

    x = 1000 X + W / 2,       y = H / 2 - 1000 Y,       z = 1000 Z

``image``: the ``VERTICES`` coordinates unchanged (pixels; x right, y down, z towards the
camera): for overlaying the meshes on the picture. That frame is left-handed, so viewers
show it upside down.

A glTF file states its frame in ``asset.extras.tddfa``: the space, the picture size and
``to_image``, the 4x4 matrix that maps a point of the scene to image pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SPACES = ("upright", "image")
DEFAULT_SPACE = "upright"
PIXELS_PER_METRE = 1000.0  # upright: 1 pixel of the picture = 1 millimetre


@dataclasses.dataclass(frozen=True)
class MeshSpace:
    """The frame of a picture's meshes: ``name`` (one of :data:`SPACES`) and the picture's
    ``width`` x ``height`` in pixels."""

    name: str
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.name not in SPACES:
            raise ValueError(f"unknown mesh space {self.name!r}: choose {' or '.join(SPACES)}")

    def from_image(self) -> np.ndarray:
        """(4, 4) float64: image pixels -> this frame (homogeneous points)."""
        if self.name == "image":
            return np.eye(4)
        k = 1.0 / PIXELS_PER_METRE
        return np.array(
            [
                [k, 0.0, 0.0, -0.5 * self.width * k],
                [0.0, -k, 0.0, 0.5 * self.height * k],
                [0.0, 0.0, k, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )

    def to_image(self) -> np.ndarray:
        """(4, 4) float64: this frame -> image pixels (the documented mapping back)."""
        return np.linalg.inv(self.from_image())

    def points(self, image_points: np.ndarray) -> np.ndarray:
        """(..., 3, N) image-space points -> (..., 3, N) float64 points of this frame."""
        m = self.from_image()
        return np.einsum("ij,...jn->...in", m[:3, :3], image_points) + m[:3, 3:]

    @property
    def unit(self) -> str:
        return "pixel" if self.name == "image" else "metre"

    def description(self) -> dict[str, Any]:
        """What a glTF file says about its frame (``asset.extras.tddfa``)."""
        return {
            "space": self.name,
            "unit": self.unit,
            "image_size": [int(self.width), int(self.height)],
            "to_image": np.round(self.to_image(), 12).tolist(),
        }
