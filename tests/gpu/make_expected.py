"""Write the CPU ensemble's outputs that the GPU suite compares against (run on a CPU machine).

The in-process pipeline (the served steps, onnxruntime, Mesa llvmpipe renderer) on a CPU
build of the repository, for the three test photos, a 12-face mosaic and a blank frame.
Keys are ``<image>:<OUTPUT>``; VERTICES and RENDERED only for the small photos (size).

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

from tddfa.pipeline import Pipeline

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
    finally:
        pipeline.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **data)
    print(f"wrote {len(data)} arrays to {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
