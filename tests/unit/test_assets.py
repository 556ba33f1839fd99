"""Asset resolution (explicit dir > env > cache > download), sha256 checks, safe loaders."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from tddfa_tools.assets import command, resolve, safe_load, table
from tddfa_tools.assets.resolve import resolve_assets
from tddfa_tools.assets.safe_load import load_pickle
from tddfa_tools.assets.table import Asset, AssetError

CONTENT = b"pretend weights\n"
SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A one-file asset table served from a file:// URL; empty cache; no TDDFA_ASSET_DIR."""
    upstream = tmp_path / "upstream" / "x.bin"
    upstream.parent.mkdir()
    upstream.write_bytes(CONTENT)
    one_file = {
        "x.bin": Asset("sub/x.bin", upstream.as_uri(), SHA),
        "opt.bin": Asset("sub/opt.bin", (tmp_path / "nowhere").as_uri(), None, optional=True),
    }
    for module in (resolve, command):  # the modules that read the table
        monkeypatch.setattr(module, "ASSETS", one_file)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(resolve.ENV_ASSET_DIR, raising=False)
    dirs = {name: tmp_path / name for name in ("explicit", "env")}
    dirs["cache"] = tmp_path / "cache" / "tddfa" / "assets"
    dirs["upstream"] = upstream
    return dirs


def _put(folder: Path, content: bytes = CONTENT) -> Path:
    path = folder / "sub" / "x.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_table_is_complete():
    for name, asset in table.ASSETS.items():
        upstream = r"https://raw\.githubusercontent\.com/(cleardusk/3DDFA(_V2)?|NVIDIA-AI-IOT/FFmpeg-GPU-Demo)/"
        assert re.match(upstream, asset.url), asset.url
        assert asset.url.endswith(name) and asset.rel.endswith(name)
        if not asset.optional:
            assert asset.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", asset.sha256)
    assert table.ASSETS["mb1_120x120.pth"].optional
    assert table.ASSETS["bfm_noneck_v3.pkl"].optional


def test_shared_assets_verify(asset_dir: Path):
    found = resolve_assets(asset_dir=asset_dir, download=False)
    required = {n for n, a in table.ASSETS.items() if not a.optional}
    assert required <= set(found)
    assert all(found[n].is_relative_to(asset_dir) for n in required)


def test_resolution_order(isolated, monkeypatch):
    explicit, env, cache = (
        _put(isolated["explicit"]),
        _put(isolated["env"]),
        _put(isolated["cache"]),
    )
    monkeypatch.setenv(resolve.ENV_ASSET_DIR, str(isolated["env"]))
    assert resolve_assets(["x.bin"], asset_dir=isolated["explicit"])["x.bin"] == explicit
    assert resolve_assets(["x.bin"])["x.bin"] == env
    monkeypatch.delenv(resolve.ENV_ASSET_DIR)
    assert resolve_assets(["x.bin"], download=False)["x.bin"] == cache
    # a folder without the file falls through to the cache
    assert resolve_assets(["x.bin"], asset_dir=isolated["env"].parent / "empty")["x.bin"] == cache


def test_download_into_cache(isolated):
    path = resolve_assets(["x.bin"])["x.bin"]
    assert path == isolated["cache"] / "sub" / "x.bin"
    assert path.read_bytes() == CONTENT
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in path.parent.iterdir()] == ["x.bin"]  # no temporary leftovers


def test_explicit_copy_with_wrong_sha_is_an_error(isolated):
    bad = _put(isolated["explicit"], b"tampered")
    with pytest.raises(AssetError, match="sha256") as info:
        resolve_assets(["x.bin"], asset_dir=isolated["explicit"])
    assert str(bad) in str(info.value) and SHA in str(info.value)


def test_corrupt_cache_copy_is_downloaded_again(isolated):
    _put(isolated["cache"], b"truncated")
    assert resolve_assets(["x.bin"])["x.bin"].read_bytes() == CONTENT


def test_download_with_wrong_sha_keeps_nothing(isolated):
    isolated["upstream"].write_bytes(b"upstream changed")
    with pytest.raises(AssetError, match="sha256"):
        resolve_assets(["x.bin"])
    assert not (isolated["cache"] / "sub").exists() or not any(
        (isolated["cache"] / "sub").iterdir()
    )


def test_missing_message_lists_url_and_fix(isolated):
    isolated["upstream"].unlink()  # "no network": the download fails
    with pytest.raises(AssetError) as info:
        resolve_assets()  # the optional file is missing too, but does not raise
    message = str(info.value)
    assert "x.bin" in message and isolated["upstream"].as_uri() in message
    assert "download failed" in message
    assert "--assets" in message and resolve.ENV_ASSET_DIR in message
    assert "opt.bin" not in message
    with pytest.raises(AssetError, match="not in the cache .*; `tddfa assets` downloads it"):
        resolve_assets(["x.bin"], download=False)


def test_optional_missing_is_left_out(isolated):
    _put(isolated["cache"])
    assert set(resolve_assets(download=False)) == {"x.bin"}
    with pytest.raises(AssetError, match="opt.bin"):
        resolve.asset_path("opt.bin")


def test_unknown_name():
    with pytest.raises(KeyError, match="unknown asset"):
        resolve_assets(["nope.bin"], download=False)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"mean": np.zeros(3), "payload": _Evil(marker)}))
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|os|nt)\.system"):
        load_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("target", [eval, getattr, __import__])
def test_other_globals_are_refused(tmp_path: Path, target):
    class Reducer:
        def __reduce__(self):
            return (target, ("1",) if target is not getattr else (1, "real"))

    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(Reducer()))
    with pytest.raises(pickle.UnpicklingError, match=f"builtins.{target.__name__}"):
        load_pickle(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_round_trip(tmp_path: Path, protocol: int):
    data = {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "s": np.float32(2.5), "l": [1, (2,)]}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = load_pickle(path)
    np.testing.assert_array_equal(loaded["a"], data["a"])
    assert loaded["s"] == np.float32(2.5) and loaded["l"] == [1, (2,)]


def test_real_pickles_load(asset_dir: Path):
    mean_std = load_pickle(asset_dir / "3ddfa_v2" / "param_mean_std_62d_120x120.pkl")
    assert mean_std["mean"].shape == (62,) and mean_std["std"].shape == (62,)
    tri = load_pickle(asset_dir / "3ddfa_v2" / "tri.pkl")
    assert tri.shape == (3, 76073) and tri.dtype == np.int32
    paf = load_pickle(asset_dir / "3ddfa_v1" / "Model_PAF.pkl")
    assert paf["mu_filter"].shape == (12288, 1) and paf["w_filter"].shape == (12288, 40)


def test_torch_checkpoint_refuses_objects(tmp_path: Path, asset_dir: Path):
    torch = pytest.importorskip("torch", reason="torch is needed to load checkpoints")
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Evil(tmp_path / "pwned")}, path)
    with pytest.raises(pickle.UnpicklingError):
        safe_load.load_torch_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    checkpoint = safe_load.load_torch_checkpoint(asset_dir / "3ddfa_v2" / "mb05_120x120.pth")
    assert "module.fc_param.weight" in checkpoint["state_dict"]


def test_cli_check(asset_dir: Path, isolated, capsys):
    from tddfa_tools.cli import main

    assert main(["assets", "--assets", str(asset_dir), "--check"]) == 1  # table patched: no x.bin
    _put(isolated["explicit"])
    assert main(["assets", "--assets", str(isolated["explicit"]), "--check"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"x\.bin\s+\S+sub/x\.bin\s+ok", out)
    assert "opt.bin" in out and "missing (optional)" in out
