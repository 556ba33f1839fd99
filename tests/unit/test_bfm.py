"""BFM builder (approximate and exact paths), the .npz format and the dense decoder."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from tddfa.bfm import BFM, DenseDecoder, load_bfm, save_bfm
from tddfa.config import NUM_EXP, NUM_LANDMARKS, NUM_SHAPE, NUM_TRIANGLES, NUM_VERTICES
from tddfa_tools.build.bfm_builder import (
    BFM_ASSET_NAMES,
    MAX_HELDOUT_REL_ERROR,
    MAX_LANDMARK_REL_ERROR,
    build_bfm,
)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def assets(asset_dir: Path) -> dict[str, Path]:
    from tddfa_tools.assets.resolve import resolve_assets

    return resolve_assets(BFM_ASSET_NAMES, asset_dir=asset_dir, download=False)


@pytest.fixture(scope="module")
def built(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[BFM, Path]:
    """The approximate BFM, built once for the module: (model, .npz path)."""
    path = tmp_path_factory.mktemp("bfm") / "bfm.npz"
    return build_bfm(assets, path), path


def test_shapes_and_dtypes(built: tuple[BFM, Path]) -> None:
    bfm, _ = built
    n3 = 3 * NUM_VERTICES
    assert bfm.u.shape == (n3,) and bfm.u.dtype == np.float32
    assert bfm.w_shp.shape == (n3, NUM_SHAPE) and bfm.w_shp.dtype == np.float32
    assert bfm.w_exp.shape == (n3, NUM_EXP) and bfm.w_exp.dtype == np.float32
    assert bfm.tri.shape == (3, NUM_TRIANGLES) and bfm.tri.dtype == np.int32
    assert bfm.landmark_vertex_ids.shape == (NUM_LANDMARKS,)
    assert bfm.param_mean.shape == bfm.param_std.shape == (62,)
    assert np.isfinite(bfm.w_shp).all() and np.isfinite(bfm.w_exp).all()


def test_approximate_model_is_flagged(built: tuple[BFM, Path]) -> None:
    bfm, _ = built
    assert not bfm.exact
    assert "APPROXIMATE" in bfm.description()
    assert bfm.metadata["source"].startswith("approximate")


def test_mean_and_landmark_rows_are_exact(built: tuple[BFM, Path], asset_dir: Path) -> None:
    bfm, _ = built
    v1 = asset_dir / "3ddfa_v1"
    full_u = (np.load(v1 / "u_shp.npy") + np.load(v1 / "u_exp.npy")).reshape(-1)
    indices = np.load(asset_dir / "3ddfa_v2" / "indices.npy")
    np.testing.assert_array_equal(bfm.u, full_u.reshape(-1, 3)[indices].reshape(-1))
    keypoints = np.load(v1 / "keypoints_sim.npy")
    np.testing.assert_array_equal(bfm.u_lm, full_u[keypoints])
    np.testing.assert_array_equal(indices[bfm.landmark_vertex_ids], keypoints[::3] // 3)
    rows = bfm.landmark_rows
    for basis, stored, name in (
        (bfm.w_shp, bfm.w_shp_lm, "w_shp"),
        (bfm.w_exp, bfm.w_exp_lm, "w_exp"),
    ):
        exact = np.loadtxt(v1 / f"{name}_base.txt")
        assert _rel(basis[rows], exact) <= MAX_LANDMARK_REL_ERROR
        np.testing.assert_array_equal(stored, basis[rows])
    assert bfm.metadata["landmark_rel_error"] <= MAX_LANDMARK_REL_ERROR


def test_heldout_error_within_bound(built: tuple[BFM, Path]) -> None:
    meta = built[0].metadata
    assert 0.0 < meta["heldout_rel_error"] <= MAX_HELDOUT_REL_ERROR
    assert meta["heldout_samples"] >= 300  # ~10 % of ~3,300 grid samples
    assert meta["build_seconds"] > 0  # recorded; its duration is a benchmark's business


def test_shape_basis_matches_grid_samples(built: tuple[BFM, Path], asset_dir: Path) -> None:
    """Independent of the builder: the dense basis at the vertex nearest each grid point."""
    from scipy.spatial import cKDTree

    from tddfa_tools.assets.safe_load import load_pickle

    bfm, _ = built
    paf = load_pickle(asset_dir / "3ddfa_v1" / "Model_PAF.pkl")
    grid = paf["mu_filter"].reshape(-1, 3)
    dist, nearest = cKDTree(bfm.u.reshape(-1, 3)).query(grid)
    near = dist < 1500
    dense = bfm.w_shp.reshape(-1, 3 * NUM_SHAPE)[nearest[near]]
    assert _rel(dense, paf["w_filter"].reshape(-1, 3 * NUM_SHAPE)[near]) < 0.01  # fitted points


def test_save_load_round_trip_without_pickle(built: tuple[BFM, Path], tmp_path: Path) -> None:
    bfm, path = built
    with np.load(path, allow_pickle=False) as data:
        assert data["u"].shape == bfm.u.shape
    loaded = load_bfm(path)
    for name in ("u", "w_shp", "w_exp", "tri", "u_lm", "w_shp_lm", "w_exp_lm", "param_std"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(bfm, name))
    assert loaded.exact == bfm.exact
    assert loaded.metadata == pytest.approx(bfm.metadata)
    copy = save_bfm(loaded, tmp_path / "copy.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.npz"]  # no temporary left
    np.testing.assert_array_equal(load_bfm(copy).w_exp, bfm.w_exp)


def test_load_rejects_incomplete_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, u=np.zeros(3 * NUM_VERTICES, np.float32))
    with pytest.raises(ValueError, match="lacks"):
        load_bfm(bad)
    with pytest.raises(FileNotFoundError, match="tddfa build"):
        load_bfm(tmp_path / "missing.npz")


def test_exact_model_used_when_upstream_pickle_present(
    built: tuple[BFM, Path], assets: dict[str, Path], tmp_path: Path
) -> None:
    """A bfm_noneck_v3.pkl (here a synthetic one in the upstream layout) wins over the approximation."""
    bfm, _ = built
    rng = np.random.default_rng(0)
    extra_shp = rng.standard_normal((bfm.u.size, 9)).astype(np.float32)
    upstream = {
        "u": bfm.u.reshape(-1, 1),
        "w_shp": np.hstack([bfm.w_shp, extra_shp]),  # upstream holds more columns
        "w_exp": np.hstack([bfm.w_exp, extra_shp[:, :3]]),
        "keypoints": bfm.landmark_rows.astype(np.int64),
    }
    pkl = tmp_path / "bfm_noneck_v3.pkl"
    pkl.write_bytes(pickle.dumps(upstream))
    exact = build_bfm({**assets, "bfm_noneck_v3.pkl": pkl}, tmp_path / "exact.npz")
    assert exact.exact and "exact" in exact.description()
    np.testing.assert_array_equal(exact.w_shp, bfm.w_shp)
    np.testing.assert_array_equal(exact.w_exp, bfm.w_exp)
    np.testing.assert_array_equal(exact.landmark_vertex_ids, bfm.landmark_vertex_ids)
    assert load_bfm(tmp_path / "exact.npz").exact


def decode_vertices(bfm: BFM, alpha_shp: np.ndarray, alpha_exp: np.ndarray) -> np.ndarray:
    """float64 reference (docs/models.md 4): (F, 40), (F, 10) -> (F, 3, V) model-space vertices."""
    flat = (
        bfm.u.astype(np.float64)
        + alpha_shp.astype(np.float64) @ bfm.w_shp.T.astype(np.float64)
        + alpha_exp.astype(np.float64) @ bfm.w_exp.T.astype(np.float64)
    )
    return np.swapaxes(flat.reshape(*flat.shape[:-1], -1, 3), -1, -2)


@pytest.mark.parametrize("faces", [1, 3, 8])
def test_dense_decoder_matches_the_float64_reference(built: tuple[BFM, Path], faces: int) -> None:
    """Coefficients at the regressor's scale (shape coefficients reach 1e6, coordinates are
    micrometres): float32 on one matrix product stays within 1e-5 of float64."""
    bfm, _ = built
    rng = np.random.default_rng(faces)
    alpha = (bfm.param_mean[12:] + bfm.param_std[12:] * rng.standard_normal((faces, 50))).astype(
        np.float32
    )
    got = DenseDecoder(bfm)(alpha[:, :NUM_SHAPE], alpha[:, NUM_SHAPE:])
    expected = decode_vertices(bfm, alpha[:, :NUM_SHAPE], alpha[:, NUM_SHAPE:])
    assert got.shape == (faces, 3, NUM_VERTICES) and got.dtype == np.float32
    assert _rel(got, expected) <= 1e-5


def test_dense_decoder_of_zero_coefficients_is_the_mean_shape(built: tuple[BFM, Path]) -> None:
    bfm, _ = built
    got = DenseDecoder(bfm)(
        np.zeros((1, NUM_SHAPE), np.float32), np.zeros((1, NUM_EXP), np.float32)
    )
    np.testing.assert_array_equal(got[0], bfm.u.reshape(-1, 3).T)  # x, y, z rows
