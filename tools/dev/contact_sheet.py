"""The README's contact sheet: one picture per render mode of one photo (default emma.jpg).

Runs in-process on a built repository (``tddfa build``): the ensemble without the renderer
finds and aligns the faces, then the face_renderer step draws the photo in every mode of
tddfa.contract.RENDER_MODES; the pictures are cropped to the faces, scaled, labelled and
tiled into one JPEG.

  .venv/bin/python -m tddfa_tools.dev.contact_sheet --out docs/render_modes.jpg
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tddfa_tools.locations import default_repository

log = logging.getLogger(__name__)

TILE_WIDTH = 320  # pixels per picture in the sheet
COLUMNS = 3
REPO_ROOT = Path(__file__).resolve().parents[2]  # a developer tool: run from the checkout


def render_modes(repository: Path, image: np.ndarray, asset_dir: Path | None) -> dict:
    """{mode: picture} of ``image`` through the repository's steps, in-process on the CPU."""
    from tddfa.contract import RENDER_MODE_PARAMETER, RENDER_MODES
    from tddfa.pipeline import Pipeline
    from tddfa.render.assets import RENDER_ASSETS_FILE
    from tddfa.render.step import build_render_step, inputs_from_outputs
    from tddfa_tools.build.render_assets import build_render_assets

    os.environ.setdefault("EGL_PLATFORM", "surfaceless")
    outputs = Pipeline(repository, render=False)(image[None])
    inputs = inputs_from_outputs(outputs, image[None])
    version = repository / "face_renderer" / "1"
    with tempfile.TemporaryDirectory() as scratch:
        if not (version / RENDER_ASSETS_FILE).is_file():  # a build without the render tables
            shutil.copy2(version / "bfm.npz", Path(scratch) / "bfm.npz")
            build_render_assets(asset_dir, Path(scratch) / RENDER_ASSETS_FILE)
            version = Path(scratch)
        step = build_render_step(version)
        try:
            return (
                {
                    mode: step.run(inputs, [{RENDER_MODE_PARAMETER: mode}])["RENDERED"][0]
                    for mode in RENDER_MODES
                },
                int(inputs["NUM_FACES"][0, 0]),
                outputs,
            )
        finally:
            step.close()


def face_crop(outputs: dict, height: int, width: int, margin: float = 0.45) -> tuple:
    """(x0, y0, x1, y1): a square around the first (best) face's box, grown by ``margin``."""
    if int(outputs["FACE_COUNT"][0, 0]) == 0:
        return 0, 0, width, height
    x0, y0, x1, y1 = (float(v) for v in outputs["FACE_BOXES"][0, 0, :4])
    half = (1 + 2 * margin) * max(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (
        int(max(0, cx - half)),
        int(max(0, cy - half)),
        int(min(width, cx + half)),
        int(min(height, cy + half)),
    )


def contact_sheet(pictures: dict, crop: tuple, side: int) -> Image.Image:
    """Tile the pictures (cropped to the first face; for uv its map), each labelled."""
    tiles = []
    for mode, picture in pictures.items():
        if mode == "uv":
            picture = picture[:, :side]
        else:
            x0, y0, x1, y1 = crop
            picture = picture[y0:y1, x0:x1]
        tile = Image.fromarray(np.ascontiguousarray(picture))
        tile = tile.resize((TILE_WIDTH, max(1, round(TILE_WIDTH * tile.height / tile.width))))
        tiles.append((mode, tile))
    row_height = max(t.height for _, t in tiles)
    rows = -(-len(tiles) // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * TILE_WIDTH, rows * row_height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (mode, tile) in enumerate(tiles):
        x, y = (i % COLUMNS) * TILE_WIDTH, (i // COLUMNS) * row_height
        sheet.paste(tile, (x, y + (row_height - tile.height) // 2))
        draw.rectangle((x, y, x + 8 * len(mode) + 12, y + 18), fill=(0, 0, 0))
        draw.text((x + 6, y + 3), mode, fill=(255, 255, 255))
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=default_repository())
    parser.add_argument("--assets", type=Path, default=None, help="asset folder")
    parser.add_argument("--image", type=Path, default=None, help="photo (default: emma.jpg)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "render_modes.jpg")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from tddfa.config import PipelineConfig
    from tddfa.files import atomic_path
    from tddfa_tools.assets.resolve import asset_path

    source = args.image or asset_path("emma.jpg", asset_dir=args.assets)
    image = np.asarray(Image.open(source).convert("RGB"))
    pictures, faces, outputs = render_modes(args.repository, image, args.assets)
    crop = face_crop(outputs, *image.shape[:2])
    sheet = contact_sheet(pictures, crop, PipelineConfig().uv_size)
    with atomic_path(args.out) as temp:
        sheet.save(temp, format="JPEG", quality=82, optimize=True)
    log.info("contact sheet of %s (%d faces) -> %s", source.name, faces, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
