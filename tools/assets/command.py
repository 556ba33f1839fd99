"""``tddfa assets``: resolve (or only verify) every model asset and print a table."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tddfa_tools.assets.resolve import ENV_ASSET_DIR, cache_dir, explicit_dir, resolve_assets
from tddfa_tools.assets.table import ASSETS, Asset, AssetError

LOG = logging.getLogger(__name__)


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
