"""The renderer's per-vertex tables and texture: one ``render_assets.npz`` per model version.

Written by ``tddfa_tools.build.render_assets.build_render_assets`` from 3DDFA_V2's files:

- ``ncc`` (3, N) float32: ``configs/ncc_code.npy``, the per-axis min-max normalised mean
  shape, the ``pncc`` mode's colours (row 0 -> red, 1 -> green, 2 -> blue);
- ``uv`` (N, 2) float32: ``configs/BFM_UV.mat``'s ``UV`` rows at ``configs/indices.npy``
  (the no-neck vertices), (u, v) in [0, 1], v up: the ``texture`` and ``uv`` modes;
- ``texture`` (H, W, 3) uint8 RGB: the default image of the ``texture`` mode, the FFmpeg
  GPU demo's ``color.1024x1024.jpg`` (absent when that file was not available; a
  deployment may configure any image instead, see :func:`load_texture_image`);
- ``lod_triangles`` (3, T') int32: a coarser triangulation over a subset of the same
  vertices (about 37 % of the triangles, tddfa_tools.build.mesh_lod) for small faces.

No pickles are read.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from tddfa.config import NUM_VERTICES

RENDER_ASSETS_FILE = "render_assets.npz"
_FORMAT_VERSION = 1
_REBUILD_HINT = (
    "rebuild it with `tddfa build` (tddfa_tools.build.render_assets.build_render_assets)"
)


@dataclasses.dataclass(frozen=True, eq=False)
class RenderAssets:
    ncc: np.ndarray
    uv: np.ndarray
    texture: np.ndarray | None = None
    lod_triangles: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.uv.shape[0] if self.uv.ndim == 2 else -1
        if self.ncc.shape != (3, n) or self.uv.shape != (n, 2):
            raise ValueError(
                f"render assets need ncc (3, N) and uv (N, 2), got {self.ncc.shape} and "
                f"{self.uv.shape}; {_REBUILD_HINT}"
            )
        if self.texture is not None and (self.texture.ndim != 3 or self.texture.shape[2] != 3):
            raise ValueError(f"texture must be (H, W, 3) RGB, got {self.texture.shape}")
        lod = self.lod_triangles
        if lod is not None and (lod.ndim != 2 or lod.shape[0] != 3 or lod.max() >= n):
            raise ValueError(f"lod_triangles must be (3, T) vertex ids below {n}; {_REBUILD_HINT}")

    @property
    def num_vertices(self) -> int:
        return self.uv.shape[0]


def save_render_assets(assets: RenderAssets, path: str | os.PathLike) -> Path:
    """Write ``assets`` as an .npz, atomically (tddfa.files)."""
    from tddfa.files import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "ncc": np.ascontiguousarray(assets.ncc, np.float32),
        "uv": np.ascontiguousarray(assets.uv, np.float32),
        "format_version": np.array(_FORMAT_VERSION, np.int32),
    }
    if assets.texture is not None:
        arrays["texture"] = np.ascontiguousarray(assets.texture, np.uint8)
    if assets.lod_triangles is not None:
        arrays["lod_triangles"] = np.ascontiguousarray(assets.lod_triangles, np.int32)
    with atomic_path(path) as temp, open(temp, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_render_assets(path: str | os.PathLike) -> RenderAssets:
    """Load a file written by :func:`save_render_assets` (no pickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"render assets {path} do not exist; {_REBUILD_HINT}")
    with np.load(path, allow_pickle=False) as data:
        version = int(data["format_version"]) if "format_version" in data.files else 0
        if version != _FORMAT_VERSION:
            raise ValueError(
                f"render assets {path} have format version {version}, expected "
                f"{_FORMAT_VERSION}; {_REBUILD_HINT}"
            )
        optional = {k: data[k] for k in ("texture", "lod_triangles") if k in data.files}
        assets = RenderAssets(data["ncc"], data["uv"], **optional)
    if assets.num_vertices != NUM_VERTICES:
        raise ValueError(
            f"render assets {path} have {assets.num_vertices} vertices, the no-neck BFM has "
            f"{NUM_VERTICES}; {_REBUILD_HINT}"
        )
    return assets


def load_texture_image(path: str | os.PathLike) -> np.ndarray:
    """Any 8-bit image file (PNG, JPEG, ...) as (H, W, 3) uint8 RGB, row 0 at the top.

    Its (u, v) = (0, 0) corner is the bottom-left pixel, (1, 1) the top-right one: the BFM
    UV layout (``uv`` mode's maps have the same orientation, so one of them is a valid
    texture).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(
            f"texture image {path} cannot be read ({exc}): set the face_renderer parameter "
            "texture_image to an 8-bit PNG/JPEG file, or leave it empty for the default"
        ) from exc
