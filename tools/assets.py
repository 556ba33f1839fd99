"""Model assets: one table of files, where to find them, how to verify and load them safely.

Resolution order for each file (relative path ``rel`` from :data:`ASSETS`):
  1. ``--assets DIR`` / the ``asset_dir`` argument, else the ``TDDFA_ASSET_DIR`` environment
     variable: ``DIR/rel``;
  2. the user cache ``$XDG_CACHE_HOME/tddfa/assets/rel`` (default ``~/.cache/tddfa/assets``);
  3. a download from the upstream repository into the cache (temporary name, sha256 check,
     atomic rename).
Every file with a known sha256 is verified wherever it was found. Pickles load only through
:func:`load_pickle` (numpy arrays and plain containers), torch checkpoints only through
:func:`load_torch_checkpoint` (``weights_only=True``).

Licences: 3DDFA_V2 / 3DDFA code and weights are MIT; everything derived from the Basel Face
Model is for academic, non-commercial use only.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import pickle
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tddfa.files import atomic_path

LOG = logging.getLogger(__name__)

ENV_ASSET_DIR = "TDDFA_ASSET_DIR"
V2_RAW = "https://raw.githubusercontent.com/cleardusk/3DDFA_V2/master/"
V1_RAW = "https://raw.githubusercontent.com/cleardusk/3DDFA/master/"
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


class AssetError(RuntimeError):
    """An asset is missing, unreadable or fails its checksum; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Asset:
    """One file: ``rel`` under the asset dir, its upstream ``url``, expected ``sha256``.

    ``sha256`` None means the file is not verified (not available to us when this table was
    written); ``optional`` files improve the result but the pipeline works without them.
    """

    rel: str
    url: str
    sha256: str | None
    optional: bool = False
    description: str = ""


ASSETS: dict[str, Asset] = {
    "FaceBoxesProd.pth": Asset(
        "3ddfa_v2/FaceBoxesProd.pth",
        V2_RAW + "FaceBoxes/weights/FaceBoxesProd.pth",
        "c0cb2b1e40710c0aa5fc32a8759b1496a0fe0a126c907ca0ffe35b4bd0709d09",
        description="FaceBoxes detector weights",
    ),
    "mb05_120x120.pth": Asset(
        "3ddfa_v2/mb05_120x120.pth",
        V2_RAW + "weights/mb05_120x120.pth",
        "f93ed7f1c4c0382b16d7c18480a5f67473c1917a47475a9823924f38aeb27280",
        description="MobileNetV1 x0.5 3DMM regressor",
    ),
    "mb1_120x120.pth": Asset(
        "3ddfa_v2/mb1_120x120.pth",
        V2_RAW + "weights/mb1_120x120.pth",
        None,
        optional=True,
        description="MobileNetV1 x1.0 3DMM regressor (optional)",
    ),
    "param_mean_std_62d_120x120.pkl": Asset(
        "3ddfa_v2/param_mean_std_62d_120x120.pkl",
        V2_RAW + "configs/param_mean_std_62d_120x120.pkl",
        "090d7150f77cb66c29ddae21e4508fbde59123dcd1dea7facc24a7ed06d1c795",
        description="regressor output mean/std (62,)",
    ),
    "tri.pkl": Asset(
        "3ddfa_v2/tri.pkl",
        V2_RAW + "configs/tri.pkl",
        "0562a594d8369f7d1c86306522ff76fd3a2c81cf90ba9443893c1191ad0abbb8",
        description="no-neck BFM triangles (3, 76073)",
    ),
    "indices.npy": Asset(
        "3ddfa_v2/indices.npy",
        V2_RAW + "configs/indices.npy",
        "b341debcdf26492332c1f96ced438e727e74164d1524cab9cca0aedf6ccd39c8",
        description="no-neck vertex indices into the full BFM",
    ),
    "ncc_code.npy": Asset(
        "3ddfa_v2/ncc_code.npy",
        V2_RAW + "configs/ncc_code.npy",
        "edab94fb09d2e25660d62eb068316becf8998e793dfe2ae3ac89196ebc0af981",
        description="normalised mean shape colour code (3, 38365)",
    ),
    "BFM_UV.mat": Asset(
        "3ddfa_v2/BFM_UV.mat",
        V2_RAW + "configs/BFM_UV.mat",
        "60be915f601563e274d9737abd54c6b925e8e737fa1c89d3cd64933315629ce1",
        description="BFM texture coordinates",
    ),
    "color.1024x1024.jpg": Asset(
        "ffmpeg_gpu_demo/color.1024x1024.jpg",
        "https://raw.githubusercontent.com/NVIDIA-AI-IOT/FFmpeg-GPU-Demo/master/ffmpeg-gpu/3ddfa/"
        "color.1024x1024.jpg",
        "f6363781b0fb985420932a818d442559443b3b3c74ae2f0e663bf8c6668b80a2",
        optional=True,
        description="the FFmpeg GPU demo's face texture (a vertical rainbow), the texture "
        "render mode's default (optional: a deployment may configure its own image)",
    ),
    "bfm_noneck_v3.pkl": Asset(
        "3ddfa_v2/bfm_noneck_v3.pkl",
        V2_RAW + "configs/bfm_noneck_v3.pkl",
        None,
        optional=True,
        description="exact dense no-neck BFM bases (optional; else an approximate model)",
    ),
    "u_shp.npy": Asset(
        "3ddfa_v1/u_shp.npy",
        V1_RAW + "train.configs/u_shp.npy",
        "8a3b8b5ba3b0526ce3ddd3e287b26e0192c150e477767f374a6e333a365ff7dd",
        description="full BFM mean shape",
    ),
    "u_exp.npy": Asset(
        "3ddfa_v1/u_exp.npy",
        V1_RAW + "train.configs/u_exp.npy",
        "69049fb360bfff61090f7705ba510ed9bd817da871edbaa69e2fed7df624cf19",
        description="full BFM mean expression",
    ),
    "keypoints_sim.npy": Asset(
        "3ddfa_v1/keypoints_sim.npy",
        V1_RAW + "train.configs/keypoints_sim.npy",
        "065053f041b03ed32e36641d26fcd9aefef36f6c518899091cdc6038a6246c13",
        description="flat indices of the 68 landmarks",
    ),
    "w_shp_base.txt": Asset(
        "3ddfa_v1/w_shp_base.txt",
        V1_RAW + "c++/weights/w_shp_base.txt",
        "bec9a2189eb77c61ff940c801dcd9e5cd7f1973b6d91949494d9cd7ac121b7f6",
        description="exact shape basis at the 68 landmarks (204, 40)",
    ),
    "w_exp_base.txt": Asset(
        "3ddfa_v1/w_exp_base.txt",
        V1_RAW + "c++/weights/w_exp_base.txt",
        "4dc637c92c34bfd69faab74cafce23913f2b6181ff00c57a7ab69c1204d20b18",
        description="exact expression basis at the 68 landmarks (204, 10)",
    ),
    "Model_PAF.pkl": Asset(
        "3ddfa_v1/Model_PAF.pkl",
        V1_RAW + "train.configs/Model_PAF.pkl",
        "418713edd25e6c5938cb49e989ff8461d59a6c8bbe5aba3a643e9e77f9bc5e4d",
        description="64x64 grid of mean-face points and the shape basis there",
    ),
    "emma.jpg": Asset(
        "images/emma.jpg",
        V2_RAW + "examples/inputs/emma.jpg",
        "c85bf90c207c3ae5645dd6d47a7e7b35af9f43f2db16038e97e28b9b5cc42119",
        description="test photo, 3 faces",
    ),
    "trump_hillary.jpg": Asset(
        "images/trump_hillary.jpg",
        V2_RAW + "examples/inputs/trump_hillary.jpg",
        "5da6e8a9c246f3a82987f3a9f3ee0a034d798ae4215c7453337b6a82fc25a296",
        description="test photo, 2 faces",
    ),
    "JianzhuGuo.jpg": Asset(
        "images/JianzhuGuo.jpg",
        V2_RAW + "examples/inputs/JianzhuGuo.jpg",
        "258f2adac53c34bd2a2fa0399fbe6cf1ae93b84508fed4f7c84a646ef691df20",
        description="test photo, 1 face",
    ),
}


# ---------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """The user cache: ``$XDG_CACHE_HOME/tddfa/assets`` or ``~/.cache/tddfa/assets``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tddfa" / "assets"


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
            reason = "downloads disabled"
        if path is not None:
            found[name] = path
        elif asset.optional:
            LOG.info("optional asset %s not available (%s); continuing without it", name, reason)
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


# Globals a numpy pickle needs; numpy 2 writes ``numpy._core``, numpy 1 ``numpy.core``.
_PICKLE_ALLOWED = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # bytes in protocol 2 pickles (str -> bytes, nothing else)
    }
)


class _NumpyUnpickler(pickle.Unpickler):
    """Admits only numpy arrays, dtypes, scalars and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: asset pickles may hold only numpy arrays "
                "and plain containers"
            )
        if module.startswith("numpy._core"):
            import numpy as np

            if not hasattr(np, "_core"):  # numpy < 1.26 reading a numpy 2 pickle
                module = module.replace("numpy._core", "numpy.core", 1)
        return super().find_class(module, name)


def load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle holding only numpy data (Python 2 pickles are read as latin1).

    Raises pickle.UnpicklingError naming any other global the file references.
    """
    with open(path, "rb") as f:
        return _NumpyUnpickler(f, encoding="latin1").load()


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` on the CPU (tensors and containers only)."""
    import torch

    return torch.load(os.fspath(path), weights_only=True, map_location="cpu")


# ---------------------------------------------------------------------------- CLI


def _status(name: str, asset: Asset, root: Path | None, download: bool) -> tuple[str, str]:
    """(path or "-", status text) of one asset for the ``tddfa assets`` table."""
    try:
        found = resolve_assets([name], asset_dir=root, download=download)
    except AssetError as exc:
        lines = str(exc).splitlines()
        return "-", "ERROR " + (lines[1].strip() if len(lines) > 1 else lines[0])
    if name not in found:
        return "-", "missing (optional): " + asset.url
    return str(found[name]), "ok" if asset.sha256 else "ok (not verified: no known sha256)"


def run(args: argparse.Namespace) -> int:
    """``tddfa assets``: resolve (or with --check only verify) every asset, print a table."""
    root = explicit_dir(args.assets)
    rows = [(name, *_status(name, a, root, not args.check)) for name, a in ASSETS.items()]
    width = max(len(r[0]) for r in rows)
    path_width = max(len(r[1]) for r in rows)
    for name, path, status in rows:
        print(f"{name:<{width}}  {path:<{path_width}}  {status}")  # noqa: T201 (CLI output)
    if any(status.startswith("ERROR") for _, _, status in rows):
        LOG.error(
            "some assets are missing or corrupt: download the URLs above into a folder with "
            "the layout <folder>/%s and pass --assets <folder> (or set %s)",
            "{3ddfa_v1,3ddfa_v2,images}/<file>",
            ENV_ASSET_DIR,
        )
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "assets",
        help="find, download and verify the model weights and data files",
        description="Resolve every model asset: --assets DIR / $TDDFA_ASSET_DIR first, then "
        f"the cache {cache_dir()}, else download from the upstream GitHub repositories. "
        "Prints name, path and status (sha256 verified or not).",
    )
    parser.add_argument(
        "--assets", metavar="DIR", default=None, help=f"asset folder (default: ${ENV_ASSET_DIR})"
    )
    parser.add_argument(
        "--check", action="store_true", help="only verify local copies; download nothing"
    )
    parser.set_defaults(func=run)


def bfm_uv_coordinates(uv_mat: Path, indices: Path) -> np.ndarray:
    """(N, 2) float32 (u, v) of the no-neck vertices from BFM_UV.mat and indices.npy
    (v up; no OpenGL import, so clients that export meshes can read it)."""
    import scipy.io

    from tddfa.config import NUM_VERTICES

    uv = np.asarray(scipy.io.loadmat(str(uv_mat))["UV"], dtype=np.float32)  # (53215, 2)
    ids = np.load(indices, allow_pickle=False).astype(np.int64)
    if ids.shape != (NUM_VERTICES,) or ids.max() >= uv.shape[0]:
        raise ValueError(
            f"{indices} must hold {NUM_VERTICES} vertex ids below {uv.shape[0]}, got {ids.shape}"
        )
    return np.ascontiguousarray(uv[ids])
