"""One clear line per mistake: the CLI's error boundary, argument validation, nothing written
by a failing command, and the traceback only with --debug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tddfa_tools.cli import main

CLOSED_PORT = "127.0.0.1:9"  # discard port: nothing listens there on a test host


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """(exit status, stderr) of ``tddfa argv`` in-process; argparse's exits included."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def assert_one_line(err: str, *fragments: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("tddfa: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    return path


def test_build_max_faces_zero_fails(capsys, tmp_path) -> None:
    code, err = run_cli(capsys, "build", "--max-faces", "0", "--out", str(tmp_path / "repo"))
    assert code == 1
    assert_one_line(err, "max_faces must be at least 1, got 0")
    assert not (tmp_path / "repo").exists()


def test_build_without_assets_names_the_fix(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TDDFA_ASSET_DIR", str(tmp_path / "no-assets"))
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty asset cache
    monkeypatch.setattr("tddfa_tools.assets.resolve.DOWNLOAD_TIMEOUT_S", 0.5, raising=False)
    monkeypatch.setattr(
        "urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline"))
    )
    code, err = run_cli(capsys, "build", "--out", str(tmp_path / "repo"))
    assert code == 1
    assert_one_line(err, "Model assets not found", "Fix:")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "--http-port", "70000"], "a port is 0-65535, got 70000"),
        (["video", "a.mp4", "b.mp4", "--in-flight", "0"], "must be at least 1, got 0"),
        (["batch", "x", "--out", "o", "--jobs", "-1"], "must be at least 1, got -1"),
        (["image", "a.png", "b.png", "--timeout", "0"], "must be greater than 0"),
        (["perf", "--frames", "zero"], "'zero' is not an integer"),
    ],
)
def test_bad_values_are_refused_by_the_parser(capsys, argv, message) -> None:
    code, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_unknown_output_suffix_is_one_line(capsys, photo, tmp_path) -> None:
    code, err = run_cli(
        capsys, "image", str(photo), str(tmp_path / "out.gif"), "--url", CLOSED_PORT
    )
    assert code == 1
    assert_one_line(err, "out.gif: cannot write .gif", ".png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


def test_missing_input_is_one_line(capsys, tmp_path) -> None:
    code, err = run_cli(capsys, "image", str(tmp_path / "nope.jpg"), str(tmp_path / "o.png"))
    assert code == 1
    assert_one_line(err, "nope.jpg")


def test_server_down_is_one_line_and_writes_nothing(capsys, photo, tmp_path) -> None:
    out, doc = tmp_path / "out.png", tmp_path / "out.json"
    code, err = run_cli(
        capsys, "image", str(photo), str(out), "--json", str(doc), "--url", CLOSED_PORT,
        "--protocol", "http", "--timeout", "2",
    )  # fmt: skip
    assert code == 1
    assert_one_line(err, "server unavailable")
    assert not out.exists() and not doc.exists()


def test_video_into_unknown_container_is_one_line(capsys, tmp_path, asset_dir) -> None:
    source = asset_dir / "video" / "two_faces_360p.mp4"
    code, err = run_cli(capsys, "video", str(source), str(tmp_path / "out.gif"))
    assert code == 1
    assert_one_line(err, "cannot write .gif video", ".mp4")


@pytest.mark.parametrize("flag", ["--decoder=nvdec", "--encoder=nvenc"])
def test_forced_hardware_codecs_without_hardware_are_one_line(capsys, tmp_path, asset_dir, flag):
    from tddfa_clients.video_io import nvidia_codec_available

    if nvidia_codec_available():
        pytest.skip("PyNvVideoCodec is installed here: NVDEC/NVENC may really be available")
    source = asset_dir / "video" / "two_faces_360p.mp4"
    code, err = run_cli(capsys, "video", str(source), str(tmp_path / "o.mp4"), flag)
    assert code == 1
    assert_one_line(err, "PyNvVideoCodec is not installed", "cpu (or auto)")
    assert list(tmp_path.iterdir()) == []


def test_perf_with_a_missing_video_is_one_line(capsys, tmp_path) -> None:
    code, err = run_cli(capsys, "perf", "--video", str(tmp_path / "missing.mp4"))
    assert code == 1
    assert_one_line(err, "missing.mp4")


def test_debug_shows_the_traceback(tmp_path) -> None:
    """Through a real process: without --debug one line, with it the traceback."""
    argv = [sys.executable, "-m", "tddfa_tools.cli", "image", str(tmp_path / "nope.jpg"), "o.png"]
    quiet = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert quiet.stderr.count("tddfa: error:") == 1
    loud = subprocess.run([*argv, "--debug"], capture_output=True, text=True, timeout=120)
    assert loud.returncode == 1 and "Traceback" in loud.stderr
