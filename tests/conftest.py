"""Shared fixtures: the asset folder, the reference outputs, the exported ONNX networks."""

from __future__ import annotations

import os
from pathlib import Path

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
