"""Batch client pieces that need no server: discovery, manifest, error classes (the
rotation over servers: test_endpoints.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from tddfa_clients.batch import remove_stale_temporaries
from tddfa_clients.batch_jobs import BadInput, Job, check_input, discover, plan_jobs
from tddfa_clients.batch_manifest import DONE, FAILED, Manifest
from tddfa_clients.triton_client import (
    InferenceError,
    ServerUnavailable,
    normalize_url,
    translate_error,
)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for name in ("a.mp4", "b.JPG", "sub/c.png", "sub/a.mp4", "notes.txt", ".x.1234.part.mp4"):
        (root / name).write_bytes(b"x")
    return root


def test_discover_folders_globs_and_explicit_files(tree: Path) -> None:
    found = dict(discover([str(tree)]))
    assert sorted(str(p) for p in found.values()) == ["a.mp4", "b.JPG", "sub/a.mp4", "sub/c.png"]
    globbed = discover([str(tree / "sub" / "*")])
    assert sorted(p.name for p, _ in globbed) == ["a.mp4", "c.png"]
    explicit = discover([str(tree / "notes.txt"), str(tree / "missing.mp4"), str(tree / "a.mp4")])
    assert [p.name for p, _ in explicit] == ["notes.txt", "missing.mp4", "a.mp4"]
    assert len(discover([str(tree), str(tree / "a.mp4")])) == 4  # no duplicates


def test_plan_jobs_gives_unique_outputs(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    jobs = plan_jobs([str(tree), str(tree / "sub" / "*.mp4")], out)
    outputs = [j.output for j in jobs]
    assert len(set(outputs)) == len(outputs) == 4
    assert out / "b.jpg" in outputs and out / "sub" / "c.png" in outputs
    assert all(o.suffix in (".mp4", ".png", ".jpg") for o in outputs)


def test_manifest_last_record_wins_and_survives_damage(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    job = Job(tmp_path / "a.mp4", tmp_path / "out" / "a.mp4")
    manifest = Manifest(path)
    manifest.add(job, FAILED, "server unavailable")
    manifest.add(job, DONE, None, frames=50, seconds=1.5)
    with open(path, "a") as handle:
        handle.write('{"input": "cut sho')  # a crash in the middle of a write
    reloaded = Manifest(path)
    assert reloaded.records[str(job.source)]["status"] == DONE
    assert not reloaded.is_done(job)  # recorded done, but the output is gone
    job.output.parent.mkdir()
    job.output.write_bytes(b"video")
    assert reloaded.is_done(job)
    lines = path.read_text().splitlines()
    assert [json.loads(x)["status"] for x in lines[:2]] == [FAILED, DONE]  # append-only


def _bad(tmp_path: Path, asset_dir: Path, kind: str) -> Path:
    path = tmp_path / {"png16": "deep.png", "text": "x.mp4"}.get(kind, f"{kind}.mp4")
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a video")
    elif kind == "truncated":
        path.write_bytes((asset_dir / "video" / "two_faces_360p.mp4").read_bytes()[:20000])
    elif kind == "png16":
        import av
        import numpy as np

        ctx = av.CodecContext.create("png", "w")
        ctx.width, ctx.height, ctx.pix_fmt = 4, 4, "rgb48be"
        frame = av.VideoFrame.from_ndarray(np.zeros((4, 4, 3), np.uint16), format="rgb48be")
        path.write_bytes(b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)]))
    elif kind == "unreadable":
        path.symlink_to(tmp_path / "nowhere")
    return path


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("zero", "empty file"),
        ("text", "cannot open as a video"),
        ("truncated", "cannot open as a video"),
        ("png16", "16-bit"),
        ("unreadable", "cannot read"),
    ],
)
def test_bad_inputs_are_classified_with_one_line(kind, reason, tmp_path, asset_dir) -> None:
    path = _bad(tmp_path, asset_dir, kind)
    with pytest.raises(BadInput, match=reason) as info:
        check_input(Job(path, tmp_path / "out.mp4"))
    assert "\n" not in str(info.value)


def test_good_inputs_pass_the_check(asset_dir: Path, tmp_path: Path) -> None:
    check_input(Job(asset_dir / "video" / "two_faces_360p.mp4", tmp_path / "o.mp4"))
    check_input(Job(asset_dir / "images" / "emma.jpg", tmp_path / "o.jpg"))


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".a.1f2e.part.mp4").write_bytes(b"x")
    (tmp_path / "sub" / ".b.99aa.part.png").write_bytes(b"x")
    (tmp_path / "keep.mp4").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["keep.mp4"]


@pytest.mark.parametrize(
    "exc, kind",
    [
        (
            InferenceServerException(
                "failed to connect to all addresses", "StatusCode.UNAVAILABLE"
            ),
            ServerUnavailable,
        ),
        (
            InferenceServerException("IMAGE must be uint8", "StatusCode.INVALID_ARGUMENT"),
            InferenceError,
        ),
        (InferenceServerException("IMAGE must be uint8", "400"), InferenceError),
        (ConnectionRefusedError(111, "Connection refused"), ServerUnavailable),
    ],
)
def test_errors_are_classified(exc, kind) -> None:
    error = translate_error(exc)
    assert isinstance(error, kind)
    if kind is InferenceError:
        assert str(error) == "IMAGE must be uint8"  # the server's own message


def test_normalize_url_adds_default_ports() -> None:
    assert normalize_url("http://host", "http") == "host:8000"
    assert normalize_url("host", "grpc") == "host:8001"
    assert normalize_url("host:9", "grpc") == "host:9"
    with pytest.raises(ValueError, match="protocol"):
        normalize_url("host", "ftp")


def test_missing_source_folder_is_reported_not_crashed(tmp_path: Path) -> None:
    jobs = plan_jobs([str(tmp_path / "gone.mp4")], tmp_path / "out")
    with pytest.raises(BadInput, match="cannot read"):
        check_input(jobs[0])
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
