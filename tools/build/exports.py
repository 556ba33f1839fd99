"""The built networks and tables of a model repository, exported once and cached.

Each file is rebuilt only when its sources (checksums), its settings or
:data:`EXPORT_VERSION` changed: the stamp ``<file>.json`` beside it records them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from tddfa_tools.assets.resolve import sha256_of
from tddfa_tools.build.options import BuildOptions

log = logging.getLogger(__name__)

# Bump when an export changes, so cached ONNX files are rebuilt.
EXPORT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class BuiltModels:
    """Exported networks and tables, cached in ``models_dir``."""

    networks: dict[str, Path]  # network name -> ONNX file (the bare networks)
    bfm: Path
    render_assets: Path  # UV, PNCC and texture tables of the render modes
    regressor_name: str  # mb05 | mb1
    bfm_exact: bool
    torch_weights: dict[str, Path]  # per network: what the PyTorch CUDA runner rebuilds it from
    detector_graph: Path | None = None  # the whole detector as one ONNX graph (native flavours)


def _cached(out: Path, sources: list[Path], build, settings: dict | None = None) -> Path:
    """Run ``build(out)`` unless ``out`` was built from the same sources and ``settings`` by
    this version."""
    key = {"version": EXPORT_VERSION, "sources": {p.name: sha256_of(p) for p in sources}}
    if settings:
        key["settings"] = settings
    stamp = out.with_name(out.name + ".json")
    if out.exists() and stamp.exists() and json.loads(stamp.read_text()) == key:
        log.info("using cached %s", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    build(out)
    stamp.write_text(json.dumps(key))
    return out


def _build_assets(asset_dir: Path | None) -> dict[str, Path]:
    """The assets a build needs (test photos excluded). Optional upstream files (mb1, the
    exact BFM) are used when present locally; `tddfa assets` downloads them."""
    from tddfa_tools.assets.resolve import resolve_assets
    from tddfa_tools.assets.table import ASSETS

    needed = {name: a for name, a in ASSETS.items() if not name.endswith(".jpg")}
    found = resolve_assets([n for n, a in needed.items() if not a.optional], asset_dir=asset_dir)
    optional = [n for n, a in needed.items() if a.optional]
    found.update(resolve_assets(optional, asset_dir=asset_dir, download=False))
    return found


def _bfm_tables(assets: dict[str, Path], models_dir: Path) -> Path:
    """models_dir/bfm.npz, built from ``assets`` unless cached from the same files."""
    from tddfa_tools.build.bfm_builder import build_bfm

    sources = [p for p in assets.values() if p is not None and p.suffix != ".pth"]
    return _cached(models_dir / "bfm.npz", sources, lambda p: build_bfm(assets, p))


def bfm_tables(asset_dir: Path | None = None, models_dir: Path | None = None) -> Path:
    """The BFM tables (bfm.npz) `tddfa build` puts in a repository, from its cache
    (``models_dir``, default the user cache), built from the assets if missing or stale."""
    return _bfm_tables(_build_assets(asset_dir), models_dir or BuildOptions().models_dir)


def export_models(options: BuildOptions) -> BuiltModels:
    """Resolve the assets, then export (or reuse) the networks and the BFM tables: the bare
    FaceBoxes for the python flavour, the whole detector graph for the native ones."""
    from tddfa.bfm import load_bfm
    from tddfa_tools.build.export_onnx import (
        export_detector_graph,
        export_face_detector,
        export_face_regressor,
    )
    from tddfa_tools.build.render_assets import build_render_assets, render_asset_paths

    assets = _build_assets(options.asset_dir)
    regressor = options.regressor
    if regressor == "auto":
        regressor = "mb1" if assets.get("mb1_120x120.pth") else "mb05"
    weights = assets.get(f"{regressor}_120x120.pth")
    if weights is None:
        raise FileNotFoundError(
            f"--regressor {regressor} needs {regressor}_120x120.pth: put it in the asset folder "
            "(see `tddfa assets`) or choose --regressor mb05"
        )
    out = options.models_dir
    faceboxes = assets["FaceBoxesProd.pth"]
    networks, graph = {}, None
    if options.flavour == "python":
        networks["face_detector"] = _cached(
            out / "face_detector.onnx", [faceboxes], lambda p: export_face_detector(faceboxes, p)
        )
    else:  # canvas, rule, thresholds and K are baked into the graph: part of its cache key
        graph = _cached(
            out / "face_detector_graph.onnx",
            [faceboxes],
            lambda p: export_detector_graph(faceboxes, p, options.pipeline),
            settings=dataclasses.asdict(options.pipeline),
        )
    networks["face_regressor"] = _cached(
        out / f"face_regressor_{regressor}.onnx",
        [weights],
        lambda p: export_face_regressor(weights, p),
    )
    bfm = _bfm_tables(assets, out)
    render_sources = list(render_asset_paths(options.asset_dir).values())
    render_assets = _cached(
        out / "render_assets.npz",
        render_sources,
        lambda p: build_render_assets(options.asset_dir, p),
    )
    model = load_bfm(bfm)
    if not model.exact:
        log.warning("BFM: %s", model.description())
    return BuiltModels(
        networks=networks,
        bfm=bfm,
        render_assets=render_assets,
        regressor_name=regressor,
        bfm_exact=model.exact,
        torch_weights={"face_detector": faceboxes, "face_regressor": weights},
        detector_graph=graph,
    )
