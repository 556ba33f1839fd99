"""Shared fixtures (the asset folder, the reference outputs, the exported ONNX networks)
and two session rules: the suite fails if it changed the working tree (run in a git
checkout), and the random order's seed (pytest-randomly) is printed at the end."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
_TREE_BEFORE = pytest.StashKey[dict | None]()
_TREE_CHANGES = pytest.StashKey[list]()
SHARED = REPO_ROOT.parent / "shared"
# The clients the tests run resolve assets as a user's would ($TDDFA_ASSET_DIR, the cache,
# a download): point them at the same folder the fixtures use, also under a bare `pytest`.
if (SHARED / "assets").is_dir():
    os.environ.setdefault("TDDFA_ASSET_DIR", str(SHARED / "assets"))


def _working_tree() -> dict[str, str] | None:
    """{`git status --porcelain` line: digest of that path's content} for the repository,
    or None when it is not a git checkout (an unpacked sdist) or git is missing. Ignored
    paths (build/, .venv/) are not listed; a file already changed before the session is
    caught when its content changes again."""
    git = shutil.which("git")
    if git is None or not (REPO_ROOT / ".git").exists():
        return None
    done = subprocess.run(
        [git, "status", "--porcelain=v1", "--untracked-files=all", "-z"],
        cwd=REPO_ROOT, capture_output=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return None
    state = {}
    for entry in filter(None, done.stdout.decode(errors="replace").split("\0")):
        path = REPO_ROOT / entry[3:]
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        state[entry] = digest
    return state


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_TREE_BEFORE] = _working_tree()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_TREE_BEFORE, None)
    if before is None:
        return
    after = _working_tree() or {}
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    session.config.stash[_TREE_CHANGES] = changed
    if changed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    changed = config.stash.get(_TREE_CHANGES, [])
    if changed:
        terminalreporter.write_line(
            "FAILED: the test session changed the working tree (a test wrote into the "
            "repository; write under tmp_path instead):",
            red=True,
        )
        for entry in changed[:20]:
            terminalreporter.write_line(f"    {entry}")
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.pluginmanager.has_plugin("randomly"):
        terminalreporter.write_line(f"test order: pytest-randomly seed {seed} (repeat it: "
                                    f"--randomly-seed={seed})")  # fmt: skip


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
    from tddfa_tools.build.export_onnx import export_face_detector, export_face_regressor

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
    from tddfa_tools.build.options import BuildOptions
    from tddfa_tools.build.repository import build_repository

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
