"""Build the no-neck BFM ``.npz`` (exact or approximate); tddfa.bfm.DenseDecoder decodes it.

Exact: from the upstream ``bfm_noneck_v3.pkl`` when the user has it.
Approximate (docs/models.md 5), from the small public 3DDFA pieces:
- mean ``u``, triangles and the 68 landmark rows of both bases are exact;
- the shape basis elsewhere is spread over the mesh from the ``Model_PAF.pkl`` grid samples
  by minimising ``||L W||^2 + lam ||C W - S||^2`` (L: uniform row-normalised mesh
  Laplacian, C: sampled vertices) with the landmark rows imposed as hard constraints;
- the expression basis is spread from its 68 landmark rows alone (``min ||L W||^2``).
One sparse LU factorisation (SuperLU) serves all columns of a fit.

``asset_paths`` maps asset names to files. Names are the paths of the asset table
(``3ddfa_v2/tri.pkl``); a bare file name (``tri.pkl``) is accepted too.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spl
from scipy.spatial import cKDTree

from tddfa.bfm import BFM, save_bfm
from tddfa.config import NUM_EXP, NUM_LANDMARKS, NUM_SHAPE, NUM_VERTICES
from tddfa_tools.assets.safe_load import load_pickle

log = logging.getLogger(__name__)

EXACT_BFM = "3ddfa_v2/bfm_noneck_v3.pkl"
TRIANGLES = "3ddfa_v2/tri.pkl"
NONECK_INDICES = "3ddfa_v2/indices.npy"
PARAM_MEAN_STD = "3ddfa_v2/param_mean_std_62d_120x120.pkl"
U_SHP = "3ddfa_v1/u_shp.npy"
U_EXP = "3ddfa_v1/u_exp.npy"
KEYPOINTS = "3ddfa_v1/keypoints_sim.npy"
W_SHP_LANDMARKS = "3ddfa_v1/w_shp_base.txt"
W_EXP_LANDMARKS = "3ddfa_v1/w_exp_base.txt"
PAF_GRID = "3ddfa_v1/Model_PAF.pkl"
APPROXIMATE_ASSETS = (
    TRIANGLES,
    NONECK_INDICES,
    PARAM_MEAN_STD,
    U_SHP,
    U_EXP,
    KEYPOINTS,
    W_SHP_LANDMARKS,
    W_EXP_LANDMARKS,
    PAF_GRID,
)
#: Keys of tddfa_tools.assets.ASSETS the builder reads (the exact model is optional).
BFM_ASSET_NAMES = tuple(Path(rel).name for rel in (*APPROXIMATE_ASSETS, EXACT_BFM))

GRID_MAX_DISTANCE = 1500.0  # micrometres: PAF grid points farther from the mesh are dropped
SMOOTHNESS_LAMBDA = 1e3  # weight of the data term against the Laplacian
HELDOUT_FRACTION = 0.1
HELDOUT_SEED = 0
MAX_HELDOUT_REL_ERROR = 0.06
MAX_LANDMARK_REL_ERROR = 1e-6


def _asset(asset_paths: Mapping[str, os.PathLike | str], name: str) -> Path | None:
    """The file for asset ``name`` (table path or bare file name), or None if absent."""
    for key in (name, Path(name).name):
        if key in asset_paths and asset_paths[key] is not None:
            path = Path(asset_paths[key])
            if path.is_file():
                return path
    return None


def _require(asset_paths: Mapping[str, os.PathLike | str], name: str) -> Path:
    path = _asset(asset_paths, name)
    if path is None:
        raise FileNotFoundError(
            f"BFM builder needs asset {name!r} but it is not among the resolved assets; "
            "run `tddfa assets` (or pass --assets DIR / set TDDFA_ASSET_DIR) to fetch it"
        )
    return path


def build_bfm(asset_paths: Mapping[str, os.PathLike | str], out_path: os.PathLike | str) -> BFM:
    """Build the BFM from the assets, write it to ``out_path`` (.npz, atomic) and return it.

    Exact when ``bfm_noneck_v3.pkl`` is among the assets, else approximate (logged once).
    Raises RuntimeError if an approximate build misses the accuracy bounds.
    """
    start = time.perf_counter()
    exact_path = _asset(asset_paths, EXACT_BFM)
    if exact_path is not None:
        bfm = _build_exact(asset_paths, exact_path)
    else:
        bfm = _build_approximate(asset_paths)
    bfm.metadata["build_seconds"] = round(time.perf_counter() - start, 2)
    save_bfm(bfm, out_path)
    if bfm.exact:
        log.info("Built %s into %s", bfm.description(), out_path)
    else:
        log.warning("Built %s into %s", bfm.description(), out_path)
    return bfm


def _common_assets(asset_paths: Mapping[str, os.PathLike | str]) -> tuple[np.ndarray, ...]:
    """(tri (3, T) int32, param_mean (62,), param_std (62,)) float32."""
    tri = np.asarray(load_pickle(_require(asset_paths, TRIANGLES)))
    if tri.ndim == 2 and tri.shape[1] == 3 and tri.shape[0] != 3:
        tri = tri.T
    stats = load_pickle(_require(asset_paths, PARAM_MEAN_STD))
    mean = np.asarray(stats["mean"], np.float32).reshape(-1)
    std = np.asarray(stats["std"], np.float32).reshape(-1)
    return np.ascontiguousarray(tri, dtype=np.int32), mean, std


def _assemble(u, w_shp, w_exp, tri, ids, mean, std, *, exact: bool, metadata: dict) -> BFM:
    """The BFM record, with the landmark rows taken from the dense bases."""
    rows = _landmark_rows(ids)
    return BFM(
        u=u, w_shp=w_shp, w_exp=w_exp, tri=tri,
        u_lm=u[rows], w_shp_lm=w_shp[rows], w_exp_lm=w_exp[rows],
        landmark_vertex_ids=ids, param_mean=mean, param_std=std,
        exact=exact, metadata=metadata,
    )  # fmt: skip


def _landmark_rows(vertex_ids: np.ndarray) -> np.ndarray:
    """(68,) vertex ids -> (204,) xyz-interleaved row ids."""
    return (3 * vertex_ids[:, None] + np.arange(3)).reshape(-1)


def _build_exact(asset_paths: Mapping[str, os.PathLike | str], exact_path: Path) -> BFM:
    model = load_pickle(exact_path)
    u = np.asarray(model["u"], np.float32).reshape(-1)
    w_shp = np.asarray(model["w_shp"], np.float32)[:, :NUM_SHAPE]
    w_exp = np.asarray(model["w_exp"], np.float32)[:, :NUM_EXP]
    keypoints = np.asarray(model["keypoints"], np.int64).reshape(-1)
    if keypoints.shape != (3 * NUM_LANDMARKS,) or np.any(keypoints % 3 != np.tile([0, 1, 2], 68)):
        raise ValueError(
            f"{exact_path}: 'keypoints' must be 204 xyz-interleaved row ids (vertex*3 + axis); "
            "re-download bfm_noneck_v3.pkl from cleardusk/3DDFA_V2 configs/"
        )
    tri, mean, std = _common_assets(asset_paths)
    ids = keypoints[::3] // 3
    return _assemble(
        u,
        np.ascontiguousarray(w_shp),
        np.ascontiguousarray(w_exp),
        tri,
        ids,
        mean,
        std,
        exact=True,
        metadata={"source": exact_path.name, "heldout_rel_error": 0.0, "landmark_rel_error": 0.0},
    )


def _laplacian_gram(tri: np.ndarray, n: int) -> sp.csr_matrix:
    """L^T L for the uniform row-normalised Laplacian L = I - D^-1 A of the mesh (n, n)."""
    edges = np.concatenate([tri[[0, 1]], tri[[1, 2]], tri[[2, 0]]], axis=1)
    adj = sp.coo_matrix((np.ones(edges.shape[1]), (edges[0], edges[1])), shape=(n, n)).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.float64)
    degree = np.asarray(adj.sum(axis=1)).ravel()
    if np.any(degree == 0):
        raise ValueError(f"{int(np.sum(degree == 0))} mesh vertices belong to no triangle")
    lap = (sp.identity(n, format="csr") - sp.diags(1.0 / degree) @ adj).tocsr()
    return (lap.T @ lap).tocsr()


class _MeshSpreader:
    """Smooth interpolation of per-vertex values on a mesh with some vertices fixed."""

    def __init__(self, gram: sp.csr_matrix, fixed_ids: np.ndarray) -> None:
        n = gram.shape[0]
        self.n = n
        self.fixed_ids = fixed_ids
        self.free = np.ones(n, bool)
        self.free[fixed_ids] = False
        self.free_ids = np.flatnonzero(self.free)
        gram_free = gram[self.free_ids]
        self.gram_ff = gram_free[:, self.free_ids].tocsc()
        self.gram_fc = gram_free[:, fixed_ids].tocsc()

    def spread(
        self,
        fixed_values: np.ndarray,
        sample_ids: np.ndarray,
        sample_values: np.ndarray,
        lam: float,
    ) -> np.ndarray:
        """Minimise ||L W||^2 + lam ||C W - S||^2 with W[fixed_ids] = fixed_values.

        fixed_values (F, c), sample_ids (M,), sample_values (M, c) -> W (n, c) float64.
        Samples on fixed vertices are ignored (the hard constraint wins).
        """
        keep = self.free[sample_ids]
        position = np.full(self.n, -1)
        position[self.free_ids] = np.arange(self.free_ids.size)
        cols = position[sample_ids[keep]]
        select = sp.csr_matrix(
            (np.ones(cols.size), (np.arange(cols.size), cols)),
            shape=(cols.size, self.free_ids.size),
        )
        system = (self.gram_ff + lam * (select.T @ select)).tocsc()
        rhs = lam * (select.T @ sample_values[keep]) - self.gram_fc @ fixed_values
        factor = spl.splu(system)  # one sparse LU factorisation, all columns in one solve
        result = np.empty((self.n, fixed_values.shape[1]))
        result[self.fixed_ids] = fixed_values
        result[self.free_ids] = factor.solve(np.asarray(rhs))
        return result


def _rel_error(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(pred - ref) / np.linalg.norm(ref))


def _build_approximate(asset_paths: Mapping[str, os.PathLike | str]) -> BFM:
    tri, mean, std = _common_assets(asset_paths)
    indices = np.load(_require(asset_paths, NONECK_INDICES)).astype(np.int64)
    full_u = np.load(_require(asset_paths, U_SHP)) + np.load(_require(asset_paths, U_EXP))
    vertices = full_u.reshape(-1, 3)[indices].astype(np.float64)  # (V, 3)
    n = vertices.shape[0]
    if n != NUM_VERTICES:
        raise ValueError(f"indices.npy selects {n} vertices, expected {NUM_VERTICES}")

    keypoints = np.load(_require(asset_paths, KEYPOINTS)).astype(np.int64)
    to_noneck = np.full(full_u.size // 3, -1)
    to_noneck[indices] = np.arange(n)
    ids = to_noneck[keypoints[::3] // 3]
    if np.any(ids < 0):
        raise ValueError("some 68-landmark vertices are not in the no-neck mesh (indices.npy)")
    w_shp_lm = np.loadtxt(_require(asset_paths, W_SHP_LANDMARKS), dtype=np.float64)
    w_exp_lm = np.loadtxt(_require(asset_paths, W_EXP_LANDMARKS), dtype=np.float64)
    fixed_shp = w_shp_lm.reshape(NUM_LANDMARKS, 3 * NUM_SHAPE)  # per vertex: xyz x 40
    fixed_exp = w_exp_lm.reshape(NUM_LANDMARKS, 3 * NUM_EXP)

    paf = load_pickle(_require(asset_paths, PAF_GRID))
    grid = np.asarray(paf["mu_filter"], np.float64).reshape(-1, 3)
    grid_w = np.asarray(paf["w_filter"], np.float64).reshape(-1, 3 * NUM_SHAPE)
    distance, nearest = cKDTree(vertices).query(grid)
    near = distance < GRID_MAX_DISTANCE
    if near.sum() < 0.25 * grid.shape[0]:
        raise ValueError(
            f"only {int(near.sum())} of {grid.shape[0]} PAF grid points lie within "
            f"{GRID_MAX_DISTANCE} of the mean mesh: Model_PAF.pkl is not in the frame of u"
        )
    sample_ids, samples = nearest[near], grid_w[near]

    spreader = _MeshSpreader(_laplacian_gram(tri, n), ids)
    # Held-out check: fit on 90 % of the grid samples, measure on the rest.
    order = np.random.default_rng(HELDOUT_SEED).permutation(sample_ids.size)
    n_out = int(round(HELDOUT_FRACTION * sample_ids.size))
    held, train = order[:n_out], order[n_out:]
    held = held[spreader.free[sample_ids[held]]]
    fit = spreader.spread(fixed_shp, sample_ids[train], samples[train], SMOOTHNESS_LAMBDA)
    heldout_error = _rel_error(fit[sample_ids[held]], samples[held])

    shape = spreader.spread(fixed_shp, sample_ids, samples, SMOOTHNESS_LAMBDA)
    # Expression from its landmark rows alone; the shape basis spread the same way tells
    # how coarse that is (its error on the grid samples).
    no_samples = np.zeros(0, np.int64)
    both = spreader.spread(
        np.hstack([fixed_exp, fixed_shp]), no_samples, np.zeros((0, fixed_exp.shape[1] + 120)), 0.0
    )
    expression = both[:, : fixed_exp.shape[1]]
    landmark_only_error = _rel_error(both[sample_ids, fixed_exp.shape[1] :], samples)

    u = vertices.reshape(-1).astype(np.float32)
    w_shp = shape.reshape(3 * n, NUM_SHAPE).astype(np.float32)
    w_exp = expression.reshape(3 * n, NUM_EXP).astype(np.float32)
    rows = _landmark_rows(ids)
    landmark_error = max(_rel_error(w_shp[rows], w_shp_lm), _rel_error(w_exp[rows], w_exp_lm))
    if heldout_error > MAX_HELDOUT_REL_ERROR or landmark_error > MAX_LANDMARK_REL_ERROR:
        raise RuntimeError(
            f"approximate BFM misses its bounds: held-out error {heldout_error:.4f} "
            f"(max {MAX_HELDOUT_REL_ERROR}), landmark error {landmark_error:.2e} "
            f"(max {MAX_LANDMARK_REL_ERROR}); check the 3ddfa_v1 assets' checksums"
        )
    return _assemble(
        u,
        w_shp,
        w_exp,
        tri,
        ids,
        mean,
        std,
        exact=False,
        metadata={
            "source": "approximate: 3ddfa_v1 u_shp/u_exp/w_*_base/Model_PAF + indices + tri",
            "heldout_rel_error": heldout_error,
            "heldout_samples": int(held.size),
            "landmark_rel_error": landmark_error,
            "grid_samples": int(sample_ids.size),
            "grid_max_distance": GRID_MAX_DISTANCE,
            "smoothness_lambda": SMOOTHNESS_LAMBDA,
            "landmark_only_shape_rel_error": landmark_only_error,
            "expression_basis": "interpolated from the 68 landmark rows only",
        },
    )
