"""The face_renderer and face_vertices steps: BFM coefficients + transforms in, pictures or
image-space vertices out. Named arrays in, named arrays out, batch axis first (as
tddfa.steps); the Triton models are thin adapters over them (tddfa_triton.StepModel).

face_renderer (:class:`RenderStep`)::

    IMAGE (B, H, W, 3) uint8, ALPHA_SHP (B, K, 40), ALPHA_EXP (B, K, 10),
    TRANSFORM (B, K, 3, 4), NUM_FACES (B, 1) int32  [+ render_mode per frame]
    -> RENDERED (B, H, W, 3) uint8 (uv mode: (S, K * S, 3), see tddfa.contract)

face_vertices (:class:`VerticesStep`)::

    ALPHA_SHP, ALPHA_EXP, TRANSFORM, NUM_FACES -> VERTICES (B, K, 3, N) float32

Only the filled face slots are decoded (``u + W a``, tddfa.dense) and only for frames whose
mode draws a mesh; TRANSFORM is applied in the renderer's vertex shader. The render mode
is the request parameter ``render_mode`` (tddfa.contract.RENDER_MODE_PARAMETER): the
adapter hands it over as one value per frame under that name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tddfa.bfm import load_bfm
from tddfa.config import NUM_EXP, NUM_SHAPE
from tddfa.contract import RENDER_MODE_PARAMETER
from tddfa.dense import DenseDecoder, filled_slots
from tddfa.params import apply_transform
from tddfa.render.assets import RENDER_ASSETS_FILE, load_render_assets, load_texture_image
from tddfa.render.modes import MESH_MODES, OVERLAY_MODES, parse_modes
from tddfa.render.renderer import MeshFaces, MeshRenderer, OverlayFaces
from tddfa.xp import get_xp

Arrays = Mapping[str, Any]
LOG = logging.getLogger(__name__)
BFM_FILE = "bfm.npz"
DEFAULT_UV_SIZE = 256


def _check_faces(inputs: Arrays, with_image: bool) -> None:
    """Ranks and the K axis of the face inputs (ValueError naming the problem)."""
    ranks = {"ALPHA_SHP": 3, "ALPHA_EXP": 3, "TRANSFORM": 4, "NUM_FACES": 2}
    if with_image:
        ranks["IMAGE"] = 4
    for name, rank in ranks.items():
        if inputs[name].ndim != rank:
            raise ValueError(
                f"{name} must have {rank} dimensions including the batch, "
                f"got shape {tuple(inputs[name].shape)}"
            )
    batch, k = inputs["ALPHA_SHP"].shape[:2]
    expected = {
        "ALPHA_SHP": (batch, k, NUM_SHAPE),
        "ALPHA_EXP": (batch, k, NUM_EXP),
        "TRANSFORM": (batch, k, 3, 4),
        "NUM_FACES": (batch, 1),
    }
    for name, shape in expected.items():
        if tuple(inputs[name].shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} (batch, K face slots), "
                f"got {tuple(inputs[name].shape)}"
            )
    if with_image and inputs["IMAGE"].shape[0] != batch:
        raise ValueError(f"IMAGE has {inputs['IMAGE'].shape[0]} frames, the faces {batch}")


class RenderStep:
    """Draw every face over its frame in the frame's render mode (see module doc)."""

    # Triton request parameters this step reads, one value per frame under the same name.
    request_parameters = (RENDER_MODE_PARAMETER,)

    def __init__(self, renderer: MeshRenderer, decoder: DenseDecoder) -> None:
        self.renderer = renderer
        self.decoder = decoder

    def describe(self) -> str:
        return f"{self.decoder.bfm.description()}; renderer on {self.renderer.device}"

    def _modes(self, inputs: Arrays) -> list[str]:
        values = inputs.get(RENDER_MODE_PARAMETER)
        return parse_modes(None if values is None else list(values), inputs["IMAGE"].shape[0])

    def validate(self, inputs: Arrays) -> None:
        _check_faces(inputs, with_image=True)
        self.renderer.check_modes(self._modes(inputs))

    def run(self, inputs: Arrays) -> dict[str, Any]:
        images = inputs["IMAGE"]
        xp = get_xp(images)
        modes = self._modes(inputs)
        k = inputs["ALPHA_SHP"].shape[1]
        frames, slots = filled_slots(inputs["NUM_FACES"], k)  # one small copy to the host
        mesh = np.array([modes[f] in MESH_MODES for f in frames], bool)
        overlay = np.array([modes[f] in OVERLAY_MODES for f in frames], bool)
        meshes = overlays = None
        if mesh.any():
            meshes = self._faces(inputs, frames[mesh], slots[mesh], xp, MeshFaces)
        if overlay.any():
            overlays = self._faces(inputs, frames[overlay], slots[overlay], xp, OverlayFaces)
        result = self.renderer.draw(images, modes, meshes, overlays, slots=k)
        if not result.own:
            return {"RENDERED": result.frames}
        # frames with an image of their own (uv mode): one array per frame
        rendered = [result.own.get(b, result.frames[b]) for b in range(len(modes))]
        if len({tuple(r.shape) for r in rendered}) == 1:
            return {"RENDERED": xp.stack(rendered)}
        return {"RENDERED": rendered}

    def _faces(self, inputs: Arrays, frames: np.ndarray, slots: np.ndarray, xp, kind):
        at = (xp.asarray(frames), xp.asarray(slots))
        alpha_shp = inputs["ALPHA_SHP"][at]
        alpha_exp = inputs["ALPHA_EXP"][at]
        transforms = inputs["TRANSFORM"][at].astype(xp.float32, copy=False)
        if kind is MeshFaces:
            vertices = self.decoder.vertices(alpha_shp, alpha_exp)
            return MeshFaces(frames, slots, vertices, transforms, shift_z=True)
        landmarks = apply_transform(transforms, self.decoder.landmarks(alpha_shp, alpha_exp))
        return OverlayFaces(frames, landmarks, transforms)

    def close(self) -> None:
        self.renderer.close()


class VerticesStep:
    """ALPHA_SHP, ALPHA_EXP, TRANSFORM, NUM_FACES -> VERTICES (B, K, 3, N) float32 in image
    space (tddfa.params.apply_transform: z shifted to start at 0 per face), zeros in
    empty slots."""

    def __init__(self, decoder: DenseDecoder) -> None:
        self.decoder = decoder

    def describe(self) -> str:
        return self.decoder.bfm.description()

    def validate(self, inputs: Arrays) -> None:
        _check_faces(inputs, with_image=False)

    def run(self, inputs: Arrays) -> dict[str, Any]:
        alpha_shp = inputs["ALPHA_SHP"]
        xp = get_xp(alpha_shp)
        batch, k = alpha_shp.shape[:2]
        frames, slots = filled_slots(inputs["NUM_FACES"], k)
        out = xp.zeros((batch, k, 3, self.decoder.num_vertices), xp.float32)
        if len(frames):
            at = (xp.asarray(frames), xp.asarray(slots))
            model = self.decoder.vertices(alpha_shp[at], inputs["ALPHA_EXP"][at])
            out[at] = apply_transform(inputs["TRANSFORM"][at], model)
        return {"VERTICES": out}


def build_render_step(
    version_dir: str | os.PathLike,
    device: str = "cpu",
    alpha: float = 0.6,
    parameters: Mapping[str, str] | None = None,
) -> RenderStep:
    """The face_renderer step from a model version folder (bfm.npz, render_assets.npz).

    ``parameters`` (the model config's): ``uv_size`` (side of a uv mode map, default 256),
    ``texture_image`` (an image file for the texture mode, absolute or relative to the
    version folder; empty: the FFmpeg demo's rainbow from render_assets.npz).
    """
    version_dir = Path(version_dir)
    parameters = dict(parameters or {})
    bfm = load_bfm(version_dir / BFM_FILE)
    assets = load_render_assets(version_dir / RENDER_ASSETS_FILE)
    texture = None
    texture_path = parameters.get("texture_image", "").strip()
    if texture_path:
        texture = load_texture_image(version_dir / texture_path)  # absolute paths stay
    try:
        uv_size = int(parameters.get("uv_size") or DEFAULT_UV_SIZE)
    except ValueError as exc:
        raise ValueError(f"uv_size must be an integer, got {parameters['uv_size']!r}") from exc
    renderer = MeshRenderer(
        bfm.tri, device=device, alpha=alpha, assets=assets, texture=texture, uv_size=uv_size
    )
    return RenderStep(renderer, DenseDecoder(bfm))


def build_vertices_step(version_dir: str | os.PathLike) -> VerticesStep:
    """The face_vertices step from a model version folder (bfm.npz)."""
    return VerticesStep(DenseDecoder(load_bfm(Path(version_dir) / BFM_FILE)))
