"""The wheel works outside the checkout: build it from the working tree, install it into a
fresh virtual environment, then `tddfa build`, `tddfa serve` and `tddfa image` from another
folder with the default (XDG) locations.

The wheel's dependencies are not installed again (CI has no package index): the fresh
environment sees this environment's site-packages through a ``.pth`` file, which adds the
folder to ``sys.path`` without running its ``.pth`` files, so the editable install of the
checkout stays invisible and ``tddfa_tools`` comes from the wheel (checked)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
import venv
from pathlib import Path

import pytest

from tddfa_tools.serve.server import free_port

pytestmark = pytest.mark.server

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(*args: object, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the working tree's files (the build writes
    build/ and *.egg-info next to its sources: never into the checkout)."""
    if shutil.which("git") is None:
        pytest.skip("git not installed: the wheel is built from the files git knows")
    root = tmp_path_factory.mktemp("wheel")
    listed = _run(
        "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO_ROOT
    )
    source = root / "src"
    for name in filter(None, listed.stdout.split("\0")):
        if (REPO_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", root / "dist", source)  # fmt: skip
    (wheel,) = (root / "dist").glob("tddfa_triton-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the wheel; returns its bin folder."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    dependencies = Path(sysconfig.get_paths()["purelib"])
    (Path(purelib.stdout.strip()) / "tddfa-dependencies.pth").write_text(f"{dependencies}\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel)
    return env_dir / "bin"


def test_wheel_builds_serves_and_renders_from_another_folder(
    installed: Path, built_repository: Path, asset_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        TDDFA_ASSET_DIR=str(asset_dir),
    )
    module = _run(installed / "python", "-c", "import tddfa_tools; print(tddfa_tools.__file__)",
                  cwd=work, env=env)  # fmt: skip
    assert str(installed.parent) in module.stdout, f"not the wheel's package: {module.stdout}"
    # The session's exports (same sources, same export version) seed the default cache: the
    # build below reuses them instead of exporting for minutes.
    shutil.copytree(REPO_ROOT / "build" / "models", home / ".cache" / "tddfa" / "models")

    build = _run(installed / "tddfa", "build", cwd=work, env=env)
    repository = home / ".local" / "share" / "tddfa" / "model_repository"
    assert (repository / "tddfa" / "config.pbtxt").is_file(), build.stderr
    assert str(repository) in build.stderr

    http, grpc, metrics, supervisor = (free_port() for _ in range(4))
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [installed / "tddfa", "serve", "--http-port", str(http), "--grpc-port", str(grpc),
         "--metrics-port", str(metrics), "--supervisor-port", str(supervisor)],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the installed server was not ready in 180 s"
                time.sleep(0.5)
        _run(installed / "tddfa", "image", asset_dir / "images" / "emma.jpg", "emma.jpg",
             "--json", "emma.json", "--url", f"127.0.0.1:{grpc}", "--protocol", "grpc",
             cwd=work, env=env)  # fmt: skip
        assert (work / "emma.jpg").stat().st_size > 0
        assert len(json.loads((work / "emma.json").read_text())["faces"]) == 3
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=120)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
