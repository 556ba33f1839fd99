"""Where each model asset is found, how it is verified and downloaded.

Resolution order for each file (relative path ``rel`` from :data:`tddfa_tools.assets.table.ASSETS`):
  1. ``--assets DIR`` / the ``asset_dir`` argument, else the ``TDDFA_ASSET_DIR`` environment
     variable: ``DIR/rel``;
  2. the user cache ``$XDG_CACHE_HOME/tddfa/assets/rel`` (default ``~/.cache/tddfa/assets``);
  3. a download from the upstream repository into the cache (temporary name, sha256 check,
     atomic rename).
Every file with a known sha256 is verified wherever it was found.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from tddfa.files import atomic_path
from tddfa_tools.assets.table import ASSETS, Asset, AssetError
from tddfa_tools.locations import user_cache_dir

LOG = logging.getLogger(__name__)

ENV_ASSET_DIR = "TDDFA_ASSET_DIR"
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """The user cache: ``$XDG_CACHE_HOME/tddfa/assets`` or ``~/.cache/tddfa/assets``."""
    return user_cache_dir() / "assets"


def explicit_dir(asset_dir: str | os.PathLike | None = None) -> Path | None:
    """``asset_dir`` if given, else ``$TDDFA_ASSET_DIR`` if set, else None."""
    if asset_dir is not None:
        return Path(asset_dir)
    env = os.environ.get(ENV_ASSET_DIR)
    return Path(env) if env else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _lookup(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise KeyError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}") from None


def _verify(name: str, asset: Asset, path: Path) -> None:
    if asset.sha256 is None:
        LOG.debug("%s: %s has no known sha256; not verified", name, path)
        return
    actual = sha256_of(path)
    if actual != asset.sha256:
        raise AssetError(
            f"{name}: {path} has sha256 {actual}, expected {asset.sha256}. The file is "
            f"corrupt or a different version: replace it with a fresh copy of {asset.url}"
        )


def _download(name: str, asset: Asset, dest: Path) -> None:
    """Fetch ``asset.url`` to ``dest``: temporary file in the same folder, verify, rename."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        digest = hashlib.sha256()
        with (
            open(tmp, "wb") as out,
            urllib.request.urlopen(asset.url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=None) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if asset.sha256 is not None and digest.hexdigest() != asset.sha256:
            raise AssetError(
                f"{name}: download from {asset.url} has sha256 {digest.hexdigest()}, expected "
                f"{asset.sha256}; the upstream file changed or the transfer was corrupted"
            )
    if asset.sha256 is None:
        LOG.warning("%s: downloaded to %s without a known sha256 (not verified)", name, dest)
    else:
        LOG.info("%s: downloaded to %s (sha256 verified)", name, dest)


def _find_local(name: str, asset: Asset, asset_dir: Path | None) -> Path | None:
    """The first verified local copy; a bad explicit copy raises, a bad cached copy is dropped."""
    if asset_dir is not None:
        path = asset_dir / asset.rel
        if path.is_file():
            _verify(name, asset, path)
            return path
    path = cache_dir() / asset.rel
    if path.is_file():
        try:
            _verify(name, asset, path)
        except AssetError as exc:
            LOG.warning("%s; discarding the cached copy", exc)
            path.unlink()
            return None
        return path
    return None


def _missing_message(missing: list[tuple[str, Asset, str]], asset_dir: Path | None) -> str:
    folder = str(asset_dir) if asset_dir is not None else "<folder>"
    lines = ["Model assets not found locally and not downloadable:"]
    for name, asset, why in missing:
        lines.append(f"  - {name}: {asset.url} -> {folder}/{asset.rel}  ({why})")
    lines.append(
        f"Fix: download each URL to the path shown, then pass --assets {folder} or set "
        f"{ENV_ASSET_DIR}={folder}; or put the files in the cache {cache_dir()} with the "
        "same layout."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- public API


def resolve_assets(
    names: Iterable[str] | None = None,
    asset_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> dict[str, Path]:
    """Find (or download) assets; return ``{name: verified path}``.

    ``names`` None means every asset of :data:`ASSETS`. Optional assets that cannot be found
    are left out of the result with a log line; all missing required ones raise ONE
    :class:`AssetError` listing each file, its URL and how to supply it. A local file whose
    sha256 differs raises :class:`AssetError` (a bad cached copy is re-downloaded instead).
    """
    wanted = list(ASSETS) if names is None else list(names)
    root = explicit_dir(asset_dir)
    found: dict[str, Path] = {}
    missing: list[tuple[str, Asset, str]] = []
    for name in wanted:
        asset = _lookup(name)
        path = _find_local(name, asset, root)
        if path is None and download:
            dest = cache_dir() / asset.rel
            try:
                _download(name, asset, dest)
                path = dest
            except (urllib.error.URLError, OSError) as exc:
                reason = f"download failed: {exc}"
            except AssetError as exc:
                reason = str(exc)
        elif path is None:
            where = f"{root} or the cache" if root is not None else f"the cache {cache_dir()}"
            reason = f"not in {where}; `tddfa assets` downloads it"
        if path is not None:
            found[name] = path
        elif asset.optional:
            LOG.info("%s (%s) not used: %s", name, asset.description, reason)
        else:
            missing.append((name, asset, reason))
    if missing:
        raise AssetError(_missing_message(missing, root))
    return found


def asset_path(name: str, asset_dir: str | os.PathLike | None = None) -> Path:
    """The verified path of one asset (downloading it if needed); raises :class:`AssetError`."""
    found = resolve_assets([name], asset_dir=asset_dir)
    if name not in found:  # an optional asset that is not available
        asset = ASSETS[name]
        raise AssetError(
            _missing_message([(name, asset, "not available")], explicit_dir(asset_dir))
        )
    return found[name]
