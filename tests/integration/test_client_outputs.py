"""What the clients write, run as a user runs them (`python -m tddfa_tools.cli` processes
against the real ensemble): outputs that would destroy the input or go into a missing folder
are refused with one line before the server is asked, an image is refused as a video, the
JSON is compact (one face a line, rounded numbers), `tddfa batch --json` writes each input's
results beside its output, and a normal run prints no third-party warnings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server


def _tddfa(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tddfa_tools.cli", *(str(a) for a in args)],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )  # fmt: skip


def _url(server) -> tuple[str, str]:
    return "--url", server.grpc_url


def test_an_output_equal_to_the_input_is_refused(ensemble_server, asset_dir, tmp_path) -> None:
    photo = tmp_path / "emma.jpg"
    shutil.copy(asset_dir / "images" / "emma.jpg", photo)
    before = photo.read_bytes()
    result = _tddfa("image", photo, "./emma.jpg", *_url(ensemble_server), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "tddfa: error: emma.jpg is the input file: writing it would destroy the input; "
        "choose another output name"
    )
    assert photo.read_bytes() == before


def test_a_missing_output_folder_is_named(ensemble_server, asset_dir, tmp_path) -> None:
    out = tmp_path / "missing" / "emma.jpg"
    result = _tddfa(
        "image", asset_dir / "images" / "emma.jpg", out, *_url(ensemble_server), cwd=tmp_path
    )
    assert result.returncode == 1
    assert f"the output folder {out.parent} does not exist" in result.stderr
    assert ".part" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_image_is_refused_as_a_video(ensemble_server, asset_dir, tmp_path) -> None:
    photo = asset_dir / "images" / "emma.jpg"
    result = _tddfa("video", photo, "out.mp4", *_url(ensemble_server), cwd=tmp_path)
    assert result.returncode == 1
    assert f"{photo} is an image, not a video: render it with `tddfa image" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_image_json_is_compact_and_the_run_quiet(ensemble_server, asset_dir, tmp_path) -> None:
    result = _tddfa(
        "image", asset_dir / "images" / "emma.jpg", "emma.jpg", "--json", "emma.json",
        *_url(ensemble_server), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"INFO tddfa_clients.image: {asset_dir / 'images' / 'emma.jpg'}: 3 face(s) -> emma.jpg"
    ]  # no third-party warning, nothing else
    text = (tmp_path / "emma.json").read_text()
    lines = text.splitlines()
    document = json.loads(text)
    assert len(document["faces"]) == 3 and len(lines) == 2 + 3  # head, one line a face, end
    for face in document["faces"]:
        numbers = [v for row in face["landmarks"] for v in row] + face["box"]
        assert all(round(v, 2) == v for v in numbers)
        assert all(float(f"{v:.6g}") == v for v in face["params"])  # 6 significant digits
    assert len(text) < 8000, f"{len(text)} bytes for 3 faces"


def test_batch_json_beside_each_output(ensemble_server, asset_dir, tmp_path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(asset_dir / "images" / "trump_hillary.jpg", inputs)
    shutil.copy(asset_dir / "video" / "two_faces_360p.mp4", inputs)
    result = _tddfa("batch", inputs, "--out", "out", "--json", *_url(ensemble_server), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    image = json.loads((out / "trump_hillary.json").read_text())
    assert len(image["faces"]) == 2 and image["models"]
    records = [json.loads(line) for line in (out / "two_faces_360p.jsonl").read_text().splitlines()]
    assert records and all("track_id" in face for r in records for face in r["faces"])
    assert (out / "trump_hillary.jpg").is_file() and (out / "two_faces_360p.mp4").is_file()
