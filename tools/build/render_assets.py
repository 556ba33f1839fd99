"""Build ``render_assets.npz``, the renderer's per-vertex tables and default texture.

``build_render_assets(asset_dir, out)`` is what the repository builder calls for the
face_renderer version folder (next to bfm.npz). From 3DDFA_V2's public files:

- ``3ddfa_v2/ncc_code.npy`` -> ``ncc`` (3, N): the pncc mode's colours;
- ``3ddfa_v2/BFM_UV.mat`` rows at ``3ddfa_v2/indices.npy`` -> ``uv`` (N, 2): BFM texture
  coordinates of the no-neck vertices (texture and uv modes);
- ``ffmpeg_gpu_demo/color.1024x1024.jpg`` (optional) -> ``texture``: the FFmpeg GPU demo's
  face texture, the texture mode's default image;
- the mean shape (``3ddfa_v1/u_shp.npy`` + ``u_exp.npy`` at ``indices.npy``), ``uv`` and
  ``3ddfa_v2/tri.pkl`` -> ``lod_triangles``: the coarse mesh small faces are drawn with
  (tddfa_tools.build.mesh_lod).

The file format and loader are :mod:`tddfa.render.assets`. Derived from the Basel Face
Model: academic, non-commercial use only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from tddfa.render.assets import RenderAssets, load_texture_image, save_render_assets
from tddfa_tools.assets.resolve import resolve_assets
from tddfa_tools.assets.safe_load import bfm_uv_coordinates, load_pickle
from tddfa_tools.build.mesh_lod import coarse_triangles

log = logging.getLogger(__name__)

RENDER_ASSET_NAMES = (
    "ncc_code.npy",
    "BFM_UV.mat",
    "indices.npy",
    "u_shp.npy",
    "u_exp.npy",
    "tri.pkl",
)
TEXTURE_ASSET = "color.1024x1024.jpg"


def render_asset_paths(
    asset_dir: str | os.PathLike | None = None, download: bool = True
) -> dict[str, Path]:
    """{asset name: path} of every file build_render_assets reads (the texture only when
    present): the sources a build cache keys render_assets.npz on."""
    found = resolve_assets(RENDER_ASSET_NAMES, asset_dir=asset_dir, download=download)
    found.update(resolve_assets([TEXTURE_ASSET], asset_dir=asset_dir, download=download))
    return found


def build_render_assets(
    asset_dir: str | os.PathLike | None, out: str | os.PathLike, download: bool = True
) -> Path:
    """Write ``out`` (render_assets.npz) from the assets (``asset_dir``, else
    $TDDFA_ASSET_DIR, the cache, or a download); returns ``out``."""
    found = render_asset_paths(asset_dir, download)
    texture_path = found.get(TEXTURE_ASSET)
    ncc = np.load(found["ncc_code.npy"], allow_pickle=False).astype(np.float32)
    uv = bfm_uv_coordinates(found["BFM_UV.mat"], found["indices.npy"])
    texture = load_texture_image(texture_path) if texture_path else None
    ids = np.load(found["indices.npy"], allow_pickle=False).astype(np.int64)
    u = np.load(found["u_shp.npy"]) + np.load(found["u_exp.npy"])
    triangles = np.asarray(load_pickle(found["tri.pkl"]), np.int64)
    lod = coarse_triangles(u.reshape(-1, 3)[ids], uv, triangles)
    if texture is None:
        log.warning(
            "%s not found: the texture render mode needs the face_renderer parameter "
            "texture_image until it is supplied",
            TEXTURE_ASSET,
        )
    assets = RenderAssets(ncc=ncc, uv=uv, texture=texture, lod_triangles=lod)
    log.info("render assets: coarse mesh of %d triangles of %d", lod.shape[1], triangles.shape[1])
    return save_render_assets(assets, out)
