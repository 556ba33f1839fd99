"""The face_renderer and face_vertices steps: BFM coefficients + transforms in, pictures or
image-space vertices out. Named arrays in, named arrays out, batch axis first (as
tddfa.steps); the Triton models are thin adapters over them (tddfa_triton.StepModel).

face_renderer (:class:`RenderStep`)::

    IMAGE (B, H, W, 3) uint8, ALPHA_SHP (B, K, 40), ALPHA_EXP (B, K, 10),
    TRANSFORM (B, K, 3, 4), NUM_FACES (B, 1) int32  [+ render_mode per frame]
    -> RENDERED (B, H, W, 3) uint8 (uv mode: (S, K * S, 3), see tddfa.contract)

face_vertices (:class:`VerticesStep`)::

    ALPHA_SHP, ALPHA_EXP, TRANSFORM, NUM_FACES -> VERTICES (B, K, 3, N) float32

Only the filled face slots are decoded (``u + W a``, tddfa.bfm.DenseDecoder) and only for
frames whose mode draws a mesh; TRANSFORM is applied in the renderer's vertex shader. The
render mode is the request parameter ``render_mode`` (tddfa.contract.RENDER_MODE_PARAMETER):
tddfa.batching hands the step one parameter dict per frame.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tddfa import graph
from tddfa.bfm import DenseDecoder, load_bfm
from tddfa.config import PipelineConfig
from tddfa.contract import RENDER_MODE_PARAMETER
from tddfa.params import apply_transform, model_to_image
from tddfa.render.assets import RENDER_ASSETS_FILE, load_render_assets, load_texture_image
from tddfa.render.modes import (
    MESH_MODES,
    OVERLAY_MODES,
    OWN_IMAGE_MODES,
    parse_mode,
    parse_modes,
)
from tddfa.render.renderer import MeshFaces, MeshRenderer, OverlayFaces
from tddfa.xp import get_xp, to_numpy

if TYPE_CHECKING:
    from tddfa.render.cpu_renderer import CpuRenderer

Arrays = Mapping[str, Any]
LOG = logging.getLogger(__name__)
BFM_FILE = "bfm.npz"


def filled_slots(num_faces: Any, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Host indices of the filled face slots of a batch.

    Args:
        num_faces: (B, 1) or (B,) int face counts (numpy or CuPy: one small copy to the host).
        max_faces: K, the number of slots per frame.

    Returns:
        (frame index (F,), slot index (F,)) int64, frame-major.

    Raises:
        ValueError: a count outside 0..K.
    """
    counts = to_numpy(num_faces).reshape(-1).astype(np.int64)
    if counts.size and (counts.min() < 0 or counts.max() > max_faces):
        raise ValueError(
            f"NUM_FACES must lie in 0..{max_faces} (the face slots of ALPHA_SHP/TRANSFORM), "
            f"got {counts.tolist()}"
        )
    frames = np.repeat(np.arange(counts.size), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    slots = np.arange(frames.size) - starts
    return frames, slots


def slot_rows(xp, inputs: Arrays, names: Sequence[str], frames: np.ndarray, slots: np.ndarray):
    """The filled slots' rows of each (B, K, ...) input, (F, ...) each: one index into the
    B * K slots, one gather per input (instead of a pair of fancy indices each)."""
    k = inputs[names[0]].shape[1]
    at = xp.asarray(frames * k + slots)
    return [xp.take(inputs[n].reshape(-1, *inputs[n].shape[2:]), at, axis=0) for n in names]


def _check_faces(inputs: Arrays, with_image: bool) -> None:
    """Shapes of the face inputs against the graph declaration (ValueError naming the
    problem): the batch and K axes are taken from ALPHA_SHP, the rest is the declared
    per-frame shape."""
    names = ["ALPHA_SHP", "ALPHA_EXP", "TRANSFORM", "NUM_FACES"]
    for name in names + (["IMAGE"] if with_image else []):
        rank = 1 + len(graph.TENSORS[name].shape)  # with the batch axis
        if inputs[name].ndim != rank:
            raise ValueError(
                f"{name} must have {rank} dimensions including the batch, "
                f"got shape {tuple(inputs[name].shape)}"
            )
    batch, k = inputs["ALPHA_SHP"].shape[:2]
    for name in names:
        shape = (batch, *graph.TENSORS[name].dims(k))
        if tuple(inputs[name].shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} (batch, K face slots), "
                f"got {tuple(inputs[name].shape)}"
            )
    if with_image and inputs["IMAGE"].shape[0] != batch:
        raise ValueError(f"IMAGE has {inputs['IMAGE'].shape[0]} frames, the faces {batch}")


class RenderStep:
    """Draw every face over its frame in the frame's render mode (see module doc)."""

    # The Triton request parameters this step reads (tddfa.batching: one dict per frame).
    request_parameters = (RENDER_MODE_PARAMETER,)

    def __init__(
        self, renderer: MeshRenderer | CpuRenderer, decoder: DenseDecoder, coarse_below: float = 0.0
    ) -> None:
        self.renderer = renderer
        self.decoder = decoder
        # faces narrower than ``coarse_below`` px get the coarse mesh: width = the x scale
        # of TRANSFORM (pixels per model unit) times the mean face's width
        x = decoder.bfm.u[0::3]
        self._model_width = float(x.max() - x.min())
        self.coarse_below = float(coarse_below)
        # the CPU renderer's coarse faces: only the vertices drawn are decoded
        ids = getattr(renderer, "coarse_vertices", None)
        self._coarse_decoder = None
        if ids is not None and self.coarse_below > 0:
            from tddfa.render.coarse_decode import CoarseDecoder  # numba: CPU builds only

            self._coarse_decoder = CoarseDecoder(decoder.bfm, ids)

    def describe(self) -> str:
        return f"{self.decoder.bfm.description()}; renderer on {self.renderer.device}"

    def validate(self, inputs: Arrays) -> None:
        _check_faces(inputs, with_image=True)

    def validate_parameters(self, parameters: Mapping[str, Any]) -> None:
        """One request's parameters: an unknown render_mode is a ValueError naming the
        valid ones, a mode this deployment cannot draw (no texture) one naming the fix."""
        self.renderer.check_modes([parse_mode(parameters.get(RENDER_MODE_PARAMETER))])

    def run(
        self, inputs: Arrays, parameters: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, Any]:
        """``parameters``: one dict per frame (tddfa.batching); none: the default mode."""
        images = inputs["IMAGE"]
        xp = get_xp(images)
        values = None if parameters is None else [p.get(RENDER_MODE_PARAMETER) for p in parameters]
        modes = parse_modes(values, images.shape[0])
        k = inputs["ALPHA_SHP"].shape[1]
        counts, widths = self._host_numbers(inputs)  # one small copy to the host
        frames, slots = filled_slots(counts, k)
        mesh = np.array([modes[f] in MESH_MODES for f in frames], bool)
        overlay = np.array([modes[f] in OVERLAY_MODES for f in frames], bool)
        meshes = overlays = None
        if mesh.any():
            coarse = None
            if self.coarse_below > 0:  # not for uv maps: their size is not the face's
                in_image = np.array([modes[f] not in OWN_IMAGE_MODES for f in frames[mesh]])
                coarse = (widths[frames[mesh], slots[mesh]] < self.coarse_below) & in_image
            meshes = self._faces(inputs, frames[mesh], slots[mesh], xp, MeshFaces, coarse)
        if overlay.any():
            overlays = self._faces(inputs, frames[overlay], slots[overlay], xp, OverlayFaces)
        result = self.renderer.draw(images, modes, meshes, overlays, slots=k)
        if not result.own:
            return {"RENDERED": result.frames}
        # frames with an image of their own (uv mode): stacked when all agree in size, else
        # one array per frame (a batch mixing uv with other modes)
        rendered = [result.own.get(b, result.frames[b]) for b in range(len(modes))]
        if len({tuple(r.shape) for r in rendered}) == 1:
            return {"RENDERED": xp.stack(rendered)}
        return {"RENDERED": rendered}

    def _host_numbers(self, inputs: Arrays) -> tuple[np.ndarray, np.ndarray]:
        """(B,) face counts and (B, K) face widths in pixels, in one transfer from a GPU."""
        num_faces, transform = inputs["NUM_FACES"], inputs["TRANSFORM"]
        xp = get_xp(transform)
        scale = xp.sqrt((transform[..., 0, :3].astype(xp.float32) ** 2).sum(axis=-1))  # (B, K)
        batch = scale.shape[0]
        packed = to_numpy(xp.concatenate([num_faces.reshape(-1).astype(xp.float32), scale.ravel()]))
        return packed[:batch].astype(np.int64), packed[batch:].reshape(
            scale.shape
        ) * self._model_width

    def _faces(self, inputs: Arrays, frames: np.ndarray, slots: np.ndarray, xp, kind, coarse=None):
        alpha_shp, alpha_exp, transforms = slot_rows(
            xp, inputs, ("ALPHA_SHP", "ALPHA_EXP", "TRANSFORM"), frames, slots
        )
        transforms = transforms.astype(xp.float32, copy=False)
        if kind is MeshFaces:
            if self._coarse_decoder is not None and coarse is not None and coarse.any():
                return self._compact_faces(frames, slots, alpha_shp, alpha_exp, transforms, coarse)
            vertices = self.decoder.vertices(alpha_shp, alpha_exp)
            return MeshFaces(frames, slots, vertices, transforms, shift_z=True, coarse=coarse)
        landmarks = apply_transform(transforms, self.decoder.landmarks(alpha_shp, alpha_exp))
        return OverlayFaces(frames, landmarks, transforms)

    def _compact_faces(self, frames, slots, alpha_shp, alpha_exp, transforms, coarse):
        """MeshFaces whose coarse faces hold only what the CPU renderer reads of them
        (tddfa.render.coarse_decode); the others all N vertices."""
        vertices: list = [None] * len(frames)
        full, small = np.flatnonzero(~coarse), np.flatnonzero(coarse)
        if len(full):
            decoded = self.decoder.vertices(alpha_shp[full], alpha_exp[full])
            for face, rows in zip(full, decoded, strict=True):
                vertices[face] = rows
        alpha = np.concatenate([alpha_shp[small], alpha_exp[small]], axis=1)
        for face, rows in zip(small, self._coarse_decoder(alpha, transforms[small]), strict=True):
            vertices[face] = rows
        return MeshFaces(
            frames, slots, vertices, transforms, shift_z=True, coarse=coarse, compact=coarse
        )

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
        out = xp.zeros((batch * k, 3, self.decoder.num_vertices), xp.float32)
        if len(frames):
            alpha_shp, alpha_exp, transforms = slot_rows(
                xp, inputs, ("ALPHA_SHP", "ALPHA_EXP", "TRANSFORM"), frames, slots
            )
            out[xp.asarray(frames * k + slots)] = apply_transform(
                transforms, self.decoder.vertices(alpha_shp, alpha_exp)
            )
        return {"VERTICES": out.reshape(batch, k, 3, self.decoder.num_vertices)}


def build_render_step(
    version_dir: str | os.PathLike,
    device: str = "cpu",
    config: PipelineConfig | None = None,
    *,
    opengl: bool = False,
) -> RenderStep:
    """The face_renderer step from a model version folder: bfm.npz and render_assets.npz
    (without the latter the modes pncc, texture and uv answer with an error naming it).

    ``device``: ``"cpu"`` draws with the compiled CPU rasteriser (tddfa.render.cpu_renderer),
    ``"cuda:N"`` with OpenGL on that GPU's EGL device. ``opengl``: OpenGL on the CPU too
    (Mesa llvmpipe; the reference pictures the tests and benchmarks compare with).

    ``config``: render_alpha, uv_size, texture_image (an image file for the texture mode,
    absolute or relative to the version folder; empty: the FFmpeg demo's rainbow) and
    render_coarse_below (faces narrower than that many pixels get the coarse mesh),
    render_threads (the CPU renderer's threads a frame; 0: one per core, at most 4).
    """
    version_dir = Path(version_dir)
    config = config or PipelineConfig()
    bfm = load_bfm(version_dir / BFM_FILE)
    assets = None
    if (version_dir / RENDER_ASSETS_FILE).is_file():
        assets = load_render_assets(version_dir / RENDER_ASSETS_FILE)
    else:
        LOG.warning(
            "%s has no %s: render modes pncc, texture and uv are unavailable; build it with "
            "tddfa_tools.build.render_assets.build_render_assets",
            version_dir,
            RENDER_ASSETS_FILE,
        )
    texture = None
    if config.texture_image.strip():
        texture = load_texture_image(version_dir / config.texture_image.strip())  # absolute stays
    settings = {
        "alpha": config.render_alpha,
        "assets": assets,
        "texture": texture,
        "uv_size": config.uv_size,
    }
    if device == "cpu" and not opengl:
        from tddfa.render.cpu_renderer import CpuRenderer  # numba: CPU builds only

        renderer = CpuRenderer(bfm.tri, threads=config.render_threads, **settings)
    else:
        renderer = MeshRenderer(bfm.tri, device=device, **settings)
    return RenderStep(renderer, DenseDecoder(bfm), coarse_below=config.render_coarse_below)


def build_vertices_step(version_dir: str | os.PathLike) -> VerticesStep:
    """The face_vertices step from a model version folder (bfm.npz)."""
    return VerticesStep(DenseDecoder(load_bfm(Path(version_dir) / BFM_FILE)))


def inputs_from_outputs(outputs: Mapping[str, Any], images: Any) -> dict[str, np.ndarray]:
    """face_renderer's inputs rebuilt from the ``tddfa`` ensemble's outputs (host arrays):
    ALPHA_SHP / ALPHA_EXP from PARAMS, TRANSFORM from PARAMS and the ROI of FACE_BOXES (the
    detect path's crop rule, docs/models.md 3; a tracked frame's ROI came from landmarks).

    Args:
        outputs: PARAMS (B, K, 62), FACE_BOXES (B, K, 5), FACE_COUNT (B, 1).
        images: (B, H, W, 3) uint8, passed through as IMAGE.
    """
    from tddfa.roi import roi_from_box

    params = to_numpy(outputs["PARAMS"]).astype(np.float32)
    boxes = to_numpy(outputs["FACE_BOXES"])
    batch, k = params.shape[:2]
    counts = to_numpy(outputs["FACE_COUNT"]).reshape(batch, 1).astype(np.int32)
    filled = np.arange(k)[None, :] < counts
    transform = np.zeros((batch, k, 3, 4), np.float32)
    if filled.any():
        rois = roi_from_box(boxes[filled][:, :4]).astype(np.float32)
        transform[filled] = model_to_image(params[filled], rois)
    return {
        "IMAGE": images,
        "ALPHA_SHP": np.ascontiguousarray(params[..., 12:52]),
        "ALPHA_EXP": np.ascontiguousarray(params[..., 52:62]),
        "TRANSFORM": transform,
        "NUM_FACES": counts,
    }
