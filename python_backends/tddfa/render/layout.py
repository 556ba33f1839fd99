"""Where each frame of a batch goes in the one framebuffer a batch is drawn into.

A batch is drawn in one GL pass into one *target* (colour + depth) with a *background*
texture of the same size holding the frames. Each frame that needs drawing gets a tile:

- a **frame tile**: a rectangle of the frame (``src``: x, y, width, height) placed at
  ``dst`` in the target; the frame's pixels are uploaded there and its faces drawn there;
- a **UV atlas tile** for frames in ``uv`` mode: (K * S, S) pixels, face slot k's map at
  column k * S; the frame tile is then only sampled.

Two policies:

- ``full`` (GPU batches with a uv map, whose faces sample the frames in GL; and
  ``layout="frames"``): every frame's whole picture, stacked top to bottom in batch order,
  which is the memory layout of the (B, H, W, 3) batch itself: one device-to-device copy
  uploads the batch.
- ``regions`` (the rest, CPU and GPU): only the rectangle around the frame's faces (what
  they and their overlays cover, plus a margin), stacked top to bottom; frames without
  anything to draw get no tile at all. Clearing, drawing, blending and read-back then
  scale with the faces' area, not the frame's (on the GPU the frames need not go into GL
  at all: CUDA blends the drawing over them, tddfa.render.blend).

A batch whose tiles do not fit in the GL size limit is split into several passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tddfa.render.modes import OWN_IMAGE_MODES
from tddfa.xp import to_numpy

MARGIN = 3  # pixels around a region: rasterisation and bilinear sampling reach 1-2 px out


@dataclasses.dataclass(frozen=True)
class FrameTile:
    frame: int  # index in the batch
    src: tuple[int, int, int, int]  # x, y, width, height of the frame's rectangle
    dst: tuple[int, int]  # its top-left corner in the target

    @property
    def offset(self) -> tuple[int, int]:
        """Image -> target translation."""
        return self.dst[0] - self.src[0], self.dst[1] - self.src[1]

    @property
    def clip(self) -> tuple[float, float, float, float]:
        """The tile in target pixel edges (x0, y0, x1, y1)."""
        x, y = self.dst
        return x - 0.5, y - 0.5, x + self.src[2] - 0.5, y + self.src[3] - 0.5


@dataclasses.dataclass(frozen=True)
class AtlasTile:
    frame: int
    origin: tuple[int, int]  # top-left corner in the target
    size: tuple[int, int]  # width (K * S), height (S)

    def slot_clip(self, slot: int, side: int) -> tuple[float, float, float, float]:
        x, y = self.origin[0] + slot * side, self.origin[1]
        return x - 0.5, y - 0.5, x + side - 0.5, y + side - 0.5


@dataclasses.dataclass(frozen=True)
class Pass:
    """One GL pass: the frames it draws, their tiles and the target area they use."""

    frames: tuple[int, ...]
    tiles: dict[int, FrameTile]  # frame -> its frame tile (frames with nothing drawn: none)
    atlases: dict[int, AtlasTile]  # frame -> its UV atlas tile (uv frames only)
    width: int
    height: int


def region(
    low: np.ndarray, high: np.ndarray, height: int, width: int, clamp: bool = False
) -> tuple[int, int, int, int] | None:
    """The frame rectangle (x, y, w, h) around image-space boxes ``low``/``high`` ((M, 2)
    x, y each) plus :data:`MARGIN`, within the frame; None when nothing of it is inside.
    ``clamp`` first moves the boxes into the frame (frame sampling clamps to its border)."""
    if len(low) == 0:
        return None
    lo = np.min(low, axis=0).astype(np.float64)
    hi = np.max(high, axis=0).astype(np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return None
    limit = np.array([width - 1, height - 1], np.float64)
    if clamp:
        lo, hi = np.clip(lo, 0, limit), np.clip(hi, 0, limit)
    x0, y0 = (max(0, int(np.floor(v)) - MARGIN) for v in lo)
    x1 = min(width, int(np.ceil(hi[0])) + MARGIN + 1)
    y1 = min(height, int(np.ceil(hi[1])) + MARGIN + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def plan_passes(
    frame_size: tuple[int, int],
    rects: Sequence[tuple[int, int, int, int] | None],
    atlas_sizes: Sequence[tuple[int, int] | None],
    max_size: int,
) -> list[Pass]:
    """Stack the frame tiles top to bottom, then the UV atlases below them, starting a new
    pass where the GL limit is reached.

    Args:
        frame_size: (H, W) of every frame of the batch.
        rects: per frame, its rectangle (x, y, w, h) or None (nothing to draw).
        atlas_sizes: per frame, its UV atlas size (width, height) or None.
        max_size: the largest texture/renderbuffer/viewport side GL allows.
    """
    height, width = frame_size
    if width > max_size or height > max_size:
        raise ValueError(f"frame {height}x{width} exceeds the GL limit {max_size}: downscale it")
    passes: list[Pass] = []
    frames: list[int] = []
    tiles: dict[int, FrameTile] = {}
    pending: list[tuple[int, tuple[int, int]]] = []  # (frame, atlas size) of this pass
    tiles_height, atlas_height, used_width = 0, 0, 0

    def flush() -> None:
        """Close the pass: its atlases go below all its frame tiles, so the tiles stay one
        contiguous stack (the GPU path copies the frames in and out as one block)."""
        nonlocal frames, tiles, pending, tiles_height, atlas_height, used_width
        if frames:
            atlases, cursor = {}, tiles_height
            for frame, size in pending:
                atlases[frame] = AtlasTile(frame, (0, cursor), size)
                cursor += size[1]
            passes.append(Pass(tuple(frames), tiles, atlases, max(used_width, 1), max(cursor, 1)))
        frames, tiles, pending, tiles_height, atlas_height, used_width = [], {}, [], 0, 0, 0

    for frame, (rect, atlas) in enumerate(zip(rects, atlas_sizes, strict=True)):
        need = (rect[3] if rect else 0) + (atlas[1] if atlas else 0)
        if atlas and atlas[0] > max_size:
            raise ValueError(
                f"UV atlas {atlas[0]} px wide exceeds the GL limit {max_size}: lower uv_size"
            )
        if tiles_height + atlas_height + need > max_size:
            flush()
        frames.append(frame)
        if rect is not None:
            tiles[frame] = FrameTile(frame, rect, (0, tiles_height))
            tiles_height += rect[3]
            used_width = max(used_width, rect[2])
        if atlas is not None:
            pending.append((frame, atlas))
            atlas_height += atlas[1]
            used_width = max(used_width, atlas[0])
    flush()
    return passes


def spills(plan, modes, meshes, bounds, overlays, geometry) -> bool:
    """True when a face of this pass reaches beyond its tile (host arrays): the shader must
    clip it there. A lone tile needs no clipping: the viewport and scissor do it."""
    if len(plan.tiles) + len(plan.atlases) <= 1:
        return False
    boxes = []
    if meshes is not None:
        low, high = to_numpy(bounds.low), to_numpy(bounds.high)
        boxes += [
            (f, low[i, :2], high[i, :2])
            for i, f in enumerate(meshes.frame)
            if f in plan.tiles and modes[f] not in OWN_IMAGE_MODES
        ]
    if overlays is not None:
        low, high = (to_numpy(b) for b in geometry.bounds())
        boxes += [(f, low[i], high[i]) for i, f in enumerate(overlays.frame) if f in plan.tiles]
    for frame, low, high in boxes:
        x, y, w, h = plan.tiles[frame].src
        if low[0] < x - 0.5 or low[1] < y - 0.5 or high[0] > x + w - 0.5 or high[1] > y + h - 0.5:
            return True
    return False


def face_boxes(frames: int, meshes, bounds, overlays, geometry) -> list[tuple[np.ndarray, ...]]:
    """Per frame, the image-space (low, high) x, y boxes of what it draws (host arrays): its
    mesh faces' bounds and its overlays' extent."""
    lows: list[list[np.ndarray]] = [[] for _ in range(frames)]
    highs: list[list[np.ndarray]] = [[] for _ in range(frames)]
    if meshes is not None:
        low, high = to_numpy(bounds.low)[:, :2], to_numpy(bounds.high)[:, :2]
        for i, frame in enumerate(meshes.frame):
            lows[frame].append(low[i])
            highs[frame].append(high[i])
    if overlays is not None:
        low, high = (to_numpy(b) for b in geometry.bounds())
        for i, frame in enumerate(overlays.frame):
            lows[frame].append(low[i])
            highs[frame].append(high[i])
    return [
        (np.array(lows[b]).reshape(-1, 2), np.array(highs[b]).reshape(-1, 2)) for b in range(frames)
    ]


def regions(
    boxes: list[tuple[np.ndarray, ...]], height: int, width: int, clamped: list[bool]
) -> list[tuple[int, int, int, int] | None]:
    """Per frame, the rectangle around its boxes (:func:`region`; ``clamped``: the frame is
    sampled, as in the uv mode, so its boxes are first moved into it)."""
    return [
        region(low, high, height, width, clamp=clamp)
        for (low, high), clamp in zip(boxes, clamped, strict=True)
    ]
