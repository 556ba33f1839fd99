"""Render modes: names, the ids the shaders use, and the per-request validation.

The names and their order are the contract (:data:`tddfa.contract.RENDER_MODES`); the id
of a mode is its index there and is what the mesh shader switches on (``MODE_*`` in
:mod:`tddfa.render.shaders`). What each mode draws, and after which 3DDFA_V2 definition,
is in docs/render_modes.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tddfa.contract import DEFAULT_RENDER_MODE, RENDER_MODE_PARAMETER, RENDER_MODES, UV_MODE

MODE_IDS: dict[str, int] = {name: index for index, name in enumerate(RENDER_MODES)}

# Modes that draw the dense mesh (in the mesh pass); the others draw 2D overlays only.
MESH_MODES = frozenset({"shaded", "texture", "depth", "pncc", "normals", "wireframe", UV_MODE})
# Modes whose mesh colour is blended with the frame (render_alpha); the others are opaque.
BLENDED_MODES = frozenset({"shaded", "texture", "wireframe"})
# Modes drawn as 2D primitives from the 68 landmarks.
OVERLAY_MODES = frozenset({"landmarks", "pose"})
# Modes whose RENDERED is not the frame but an image of its own (see tddfa.contract).
OWN_IMAGE_MODES = frozenset({UV_MODE})


def parse_mode(value: Any) -> str:
    """One request's ``render_mode`` value -> a mode name.

    None or "" (parameter not sent) means the default. Raises ValueError naming the
    valid modes for anything else.
    """
    if value is None or value == "":
        return DEFAULT_RENDER_MODE
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str) or value.strip().lower() not in MODE_IDS:
        raise ValueError(
            f"unknown {RENDER_MODE_PARAMETER} {value!r}: use one of {', '.join(RENDER_MODES)} "
            f"(default {DEFAULT_RENDER_MODE})"
        )
    return value.strip().lower()


def parse_modes(values: Iterable[Any] | None, frames: int) -> list[str]:
    """Per-frame mode names for a batch of ``frames`` frames (None: all the default)."""
    if values is None:
        return [DEFAULT_RENDER_MODE] * frames
    modes = [parse_mode(v) for v in values]
    if len(modes) != frames:
        raise ValueError(f"{RENDER_MODE_PARAMETER} has {len(modes)} values for {frames} frames")
    return modes


# the BFM table a mode draws with (render_assets.npz)
_NEEDS_ASSETS = {"texture": "uv", "uv": "uv", "pncc": "ncc"}


def check_available(modes: Iterable[str], has_assets: bool, has_texture: bool) -> None:
    """ValueError naming the fix for a mode a renderer cannot draw: without the render
    assets (pncc, texture, uv) or, for texture, without an image."""
    for mode in set(modes):
        need = _NEEDS_ASSETS.get(mode)
        if need and not has_assets:
            raise ValueError(
                f"render mode {mode!r} needs the BFM's {need} table: build the repository "
                "with `tddfa build` (render_assets.npz) or choose another mode"
            )
        if mode == "texture" and not has_texture:
            raise ValueError(
                "render mode 'texture' has no image: set the face_renderer parameter "
                "texture_image, or rebuild with the FFmpeg demo's color.1024x1024.jpg"
            )


def mode_ids(modes: Sequence[str]) -> list[int]:
    return [MODE_IDS[m] for m in modes]
