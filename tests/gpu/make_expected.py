"""Write the CPU ensemble's outputs that the GPU suite compares against (run on a CPU machine).

The in-process pipeline (the served steps, onnxruntime, Mesa llvmpipe renderer) on a CPU
build of the repository, for the three test photos, a 12-face mosaic and a blank frame.
Keys are ``<image>:<OUTPUT>``; VERTICES and RENDERED only for the small photos (size).
For those also face_renderer's inputs (``<image>:RENDER_INPUT:<NAME>``, from PARAMS and
FACE_BOXES) and its CPU picture in every render mode (``<image>:MODE:<mode>``), drawn by
the face_renderer step of the repository (render_assets.npz built here if it lacks one).

  .venv/bin/python tests/gpu/make_expected.py --repository build/model_repository \
      --out build/gpu_expected.npz
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from gpu_client import blank, mosaic
from PIL import Image

from tddfa.contract import RENDER_MODE_PARAMETER, RENDER_MODES
from tddfa.pipeline import Pipeline
from tddfa.render.step import inputs_from_outputs

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL = ("JianzhuGuo.jpg", "trump_hillary.jpg")  # RENDERED and VERTICES are kept for these
SPARSE = ("FACE_COUNT", "FACE_BOXES", "LANDMARKS", "POSE", "PARAMS")


def test_inputs(asset_dir: Path) -> dict[str, np.ndarray]:
    images = {
        p.name: np.asarray(Image.open(p).convert("RGB"))
        for p in sorted((asset_dir / "images").glob("*.jpg"))
    }
    images["mosaic"] = mosaic(images["JianzhuGuo.jpg"])
    images["blank"] = blank()
    return images


def render_step(repository: Path, assets: Path, scratch: Path):
    """The CPU face_renderer step of ``repository`` (render assets built if missing)."""
    import shutil

    from tddfa.render.assets import RENDER_ASSETS_FILE
    from tddfa.render.step import build_render_step
    from tddfa_tools.build.render_assets import build_render_assets

    version = repository / "face_renderer" / "1"
    if not (version / RENDER_ASSETS_FILE).is_file():
        scratch.mkdir(parents=True, exist_ok=True)
        shutil.copy2(version / "bfm.npz", scratch / "bfm.npz")
        build_render_assets(assets, scratch / RENDER_ASSETS_FILE, download=False)
        version = scratch
    return build_render_step(version, "cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "build" / "model_repository")
    parser.add_argument(
        "--assets",
        type=Path,
        default=Path(os.environ.get("TDDFA_ASSET_DIR") or REPO_ROOT.parent / "shared" / "assets"),
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "gpu_expected.npz")
    args = parser.parse_args(argv)
    pipeline = Pipeline(args.repository, device="cpu")
    renderer = render_step(args.repository, args.assets, args.out.parent / "gpu_expected_render")
    data = {}
    try:
        for name, image in test_inputs(args.assets).items():
            outputs = pipeline(image)
            count = int(outputs["FACE_COUNT"][0, 0])
            for key in SPARSE:
                data[f"{name}:{key}"] = outputs[key][0]
            if name in SMALL:
                data[f"{name}:VERTICES"] = outputs["VERTICES"][0, :count]
                data[f"{name}:RENDERED"] = outputs["RENDERED"][0]
                inputs = inputs_from_outputs(outputs, image[None])
                for key, array in inputs.items():
                    if key != "IMAGE":
                        data[f"{name}:RENDER_INPUT:{key}"] = array
                for mode in RENDER_MODES:
                    out = renderer.run(inputs, [{RENDER_MODE_PARAMETER: mode}])["RENDERED"]
                    data[f"{name}:MODE:{mode}"] = out[0]
    finally:
        pipeline.close()
        renderer.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **data)
    print(f"wrote {len(data)} arrays to {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
