"""Shared fixtures: the asset folder, the reference outputs, the exported ONNX networks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def asset_dir() -> Path:
    """$TDDFA_ASSET_DIR, else ../shared/assets beside the repository."""
    path = Path(os.environ.get("TDDFA_ASSET_DIR") or SHARED / "assets")
    if not (path / "3ddfa_v2" / "FaceBoxesProd.pth").is_file():
        pytest.skip(f"model assets not found in {path}: set TDDFA_ASSET_DIR to the asset folder")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """$TDDFA_REFERENCE_DIR, else ../shared/reference beside the repository (outputs of the
    original 3DDFA_V2)."""
    path = Path(os.environ.get("TDDFA_REFERENCE_DIR") or SHARED / "reference")
    if not (path / "emma.json").is_file():
        pytest.skip(f"reference outputs not found in {path}")
    return path


@pytest.fixture(scope="session")
def onnx_models(asset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """face_detector and face_regressor exported once per session: {model name: .onnx path}."""
    from tddfa_tools.export_onnx import export_face_detector, export_face_regressor

    out = tmp_path_factory.mktemp("onnx")
    return {
        "face_detector": export_face_detector(
            asset_dir / "3ddfa_v2" / "FaceBoxesProd.pth", out / "face_detector.onnx"
        ),
        "face_regressor": export_face_regressor(
            asset_dir / "3ddfa_v2" / "mb05_120x120.pth", out / "face_regressor.onnx"
        ),
    }


@pytest.fixture(scope="session")
def built_repository(asset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real repository (CPU default: python flavour, K=8, 720x1280 canvas), built once
    per session by `tddfa build`'s code; exported networks are cached in build/models."""
    from tddfa_tools.repository import BuildOptions, build_repository

    models_dir = Path(__file__).resolve().parents[1] / "build" / "models"
    out = tmp_path_factory.mktemp("built") / "model_repository"
    return build_repository(BuildOptions(out=out, models_dir=models_dir, asset_dir=asset_dir))


@pytest.fixture(scope="session")
def pipeline(built_repository: Path):
    """The same ensemble in-process (python_backends + onnxruntime), for comparisons."""
    from tddfa.pipeline import Pipeline

    pipeline = Pipeline(built_repository)
    yield pipeline
    pipeline.close()


@pytest.fixture(scope="session")
def landmark_pipeline(built_repository: Path):
    """The in-process ensembles without the renderer (faster where no pixels are checked)."""
    from tddfa.pipeline import Pipeline

    return Pipeline(built_repository, render=False)


@pytest.fixture(scope="session")
def test_images(asset_dir: Path) -> dict:
    """The three test photos as RGB uint8 arrays, by file name (decoded with Pillow's
    libjpeg, as the reference's OpenCV did; FFmpeg's JPEG decoder differs by up to 20 levels)."""
    from PIL import Image

    return {
        path.name: np.asarray(Image.open(path).convert("RGB"))
        for path in sorted((asset_dir / "images").glob("*.jpg"))
    }
