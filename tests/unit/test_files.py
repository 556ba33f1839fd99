"""tddfa.files: the one atomic writer (temporary name, rename, 0644, all-or-nothing groups)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tddfa.files import atomic_path, atomic_paths, is_temporary, write_bytes, write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_written_files_are_0644_not_0600(tmp_path: Path, umask_022) -> None:
    assert _mode(write_bytes(tmp_path / "a.bin", b"x")) == 0o644
    assert _mode(write_text(tmp_path / "b.json", "{}")) == 0o644
    with atomic_path(tmp_path / "c.png") as temp:
        temp.write_bytes(b"png")
    assert _mode(tmp_path / "c.png") == 0o644


def test_the_temporary_name_is_hidden_keeps_the_suffix_and_is_recognised(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "video.mp4") as temp:
        assert temp.parent == tmp_path and temp.suffix == ".mp4"
        assert temp.name.startswith(".") and is_temporary(temp)
        assert temp.exists()  # created up front, exclusively
    assert not is_temporary(tmp_path / "video.mp4")


def test_failure_leaves_neither_target_nor_temporary(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("previous")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "old.txt") as temp:
            temp.write_text("half")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["old.txt"]
    assert (tmp_path / "old.txt").read_text() == "previous"


def test_a_group_is_written_together_or_not_at_all(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_paths([tmp_path / "out.png", tmp_path / "out.json"]) as (image, doc):
            image.write_bytes(b"image")
            doc.write_text("{}")
            raise RuntimeError("the second write failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_paths([tmp_path / "out.png", tmp_path / "out.json"]) as (image, doc):
        image.write_bytes(b"image")
        doc.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.png"]


def test_a_missing_folder_fails_before_any_work(tmp_path: Path) -> None:
    work = []
    with pytest.raises(FileNotFoundError):
        with atomic_paths([tmp_path / "out.png", tmp_path / "missing" / "out.json"]):
            work.append("inference")  # never reached: the JSON folder is checked first
    assert work == [] and list(tmp_path.iterdir()) == []


def test_model_configs_are_written_0644(tmp_path: Path, umask_022) -> None:
    """config.pbtxt files were once 0600 (mkstemp); servers under another user could
    not read them."""
    from tddfa_tools.build.model_config import ModelConfig, load_config, save_config

    config = ModelConfig(name="m", backend="python", max_batch_size=8)
    save_config(config, tmp_path / "config.pbtxt")
    assert _mode(tmp_path / "config.pbtxt") == 0o644
    assert load_config(tmp_path / "config.pbtxt").max_batch_size == 8
