"""The Basel Face Model (no-neck mesh) as used by 3DDFA_V2, stored as one ``.npz``.

Layout (docs/models.md 4): the mean ``u`` and the bases ``w_shp`` / ``w_exp`` have one row per
vertex coordinate, xyz interleaved (row ``3 * v + axis``), N = 38,365 vertices.
The file is written by ``tddfa_tools.build.bfm_builder`` and holds no pickles.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tddfa.config import NUM_EXP, NUM_LANDMARKS, NUM_PARAMS, NUM_SHAPE, NUM_VERTICES
from tddfa.files import atomic_path

_ARRAY_FIELDS = (
    "u",
    "w_shp",
    "w_exp",
    "tri",
    "u_lm",
    "w_shp_lm",
    "w_exp_lm",
    "landmark_vertex_ids",
    "param_mean",
    "param_std",
)
_FORMAT_VERSION = 1
_REBUILD_HINT = "rebuild it with `tddfa build` (tddfa_tools.build.bfm_builder.build_bfm)"


@dataclasses.dataclass(frozen=True, eq=False)
class BFM:
    """Mean shape, bases and landmark rows of the no-neck BFM.

    Attributes:
        u: (3N,) float32 mean shape (shape mean + expression mean), xyz interleaved.
        w_shp: (3N, 40) float32 shape basis.
        w_exp: (3N, 10) float32 expression basis.
        tri: (3, T) int32 triangles (T = 76,073), vertex ids in [0, N).
        u_lm: (204,) float32 rows of ``u`` at the 68 landmarks, xyz interleaved.
        w_shp_lm: (204, 40) float32 rows of ``w_shp`` at the landmarks (always exact).
        w_exp_lm: (204, 10) float32 rows of ``w_exp`` at the landmarks (always exact).
        landmark_vertex_ids: (68,) int64 landmark vertex ids in the no-neck numbering.
        param_mean: (62,) float32 de-normalisation mean of the regressor output.
        param_std: (62,) float32 de-normalisation std of the regressor output.
        exact: True for the upstream dense bases, False for the approximate model.
        metadata: JSON-serialisable facts (source, heldout_rel_error, landmark_rel_error, ...).
    """

    u: np.ndarray
    w_shp: np.ndarray
    w_exp: np.ndarray
    tri: np.ndarray
    u_lm: np.ndarray
    w_shp_lm: np.ndarray
    w_exp_lm: np.ndarray
    landmark_vertex_ids: np.ndarray
    param_mean: np.ndarray
    param_std: np.ndarray
    exact: bool
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def num_vertices(self) -> int:
        return self.u.shape[0] // 3

    @property
    def landmark_rows(self) -> np.ndarray:
        """(204,) int64 rows of ``u`` / ``w_*`` of the 68 landmarks, xyz interleaved."""
        return (3 * self.landmark_vertex_ids[:, None] + np.arange(3)).reshape(-1)

    def description(self) -> str:
        """One line for logs and model configs: exact or approximate, and its errors."""
        if self.exact:
            return f"exact BFM ({self.metadata.get('source', 'upstream')})"
        return (
            "APPROXIMATE dense BFM (shape basis spread from PAF grid samples, held-out "
            f"error {100 * float(self.metadata.get('heldout_rel_error', float('nan'))):.1f} %; "
            "expression basis interpolated from the 68 landmarks): "
            "supply bfm_noneck_v3.pkl for the exact model"
        )


def _validate(bfm: BFM) -> None:
    n3 = bfm.u.shape[0] if bfm.u.ndim == 1 else -1
    rows = 3 * NUM_LANDMARKS
    expected = {
        "u": (n3,),
        "w_shp": (n3, NUM_SHAPE),
        "w_exp": (n3, NUM_EXP),
        "u_lm": (rows,),
        "w_shp_lm": (rows, NUM_SHAPE),
        "w_exp_lm": (rows, NUM_EXP),
        "landmark_vertex_ids": (NUM_LANDMARKS,),
        "param_mean": (NUM_PARAMS,),
        "param_std": (NUM_PARAMS,),
    }
    if n3 != 3 * NUM_VERTICES:
        raise ValueError(
            f"BFM u must have shape ({3 * NUM_VERTICES},) (no-neck mesh, xyz interleaved), "
            f"got {bfm.u.shape}; {_REBUILD_HINT}"
        )
    for name, shape in expected.items():
        got = getattr(bfm, name).shape
        if got != shape:
            raise ValueError(
                f"BFM field {name} must have shape {shape}, got {got}; {_REBUILD_HINT}"
            )
    if bfm.tri.ndim != 2 or bfm.tri.shape[0] != 3:
        raise ValueError(f"BFM tri must have shape (3, T), got {bfm.tri.shape}; {_REBUILD_HINT}")
    if bfm.tri.min() < 0 or bfm.tri.max() >= NUM_VERTICES:
        raise ValueError(f"BFM tri holds vertex ids outside [0, {NUM_VERTICES}); {_REBUILD_HINT}")
    ids = bfm.landmark_vertex_ids
    if ids.min() < 0 or ids.max() >= NUM_VERTICES:
        raise ValueError(f"BFM landmark ids outside [0, {NUM_VERTICES}); {_REBUILD_HINT}")


def save_bfm(bfm: BFM, path: str | os.PathLike) -> Path:
    """Write ``bfm`` to ``path`` (.npz) atomically: a temporary file, then a rename.

    The metadata dict is stored as a JSON string, so ``np.load(allow_pickle=False)`` works.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.ascontiguousarray(getattr(bfm, name)) for name in _ARRAY_FIELDS}
    arrays["exact"] = np.array(bool(bfm.exact))
    arrays["metadata_json"] = np.array(json.dumps(bfm.metadata, sort_keys=True))
    arrays["format_version"] = np.array(_FORMAT_VERSION, dtype=np.int32)
    with atomic_path(path) as temp, open(temp, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_bfm(npz_path: str | os.PathLike) -> BFM:
    """Load a BFM written by :func:`save_bfm` (no pickles are read)."""
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise FileNotFoundError(f"BFM file {npz_path} does not exist; {_REBUILD_HINT}")
    with np.load(npz_path, allow_pickle=False) as data:
        missing = [k for k in (*_ARRAY_FIELDS, "exact", "metadata_json") if k not in data.files]
        if missing:
            raise ValueError(f"BFM file {npz_path} lacks {missing}; {_REBUILD_HINT}")
        version = int(data["format_version"]) if "format_version" in data.files else 0
        if version != _FORMAT_VERSION:
            raise ValueError(
                f"BFM file {npz_path} has format version {version}, expected "
                f"{_FORMAT_VERSION}; {_REBUILD_HINT}"
            )
        fields = {name: data[name] for name in _ARRAY_FIELDS}
        exact = bool(data["exact"])
        metadata = json.loads(str(data["metadata_json"]))
    for name in ("u", "w_shp", "w_exp", "u_lm", "w_shp_lm", "w_exp_lm", "param_mean", "param_std"):
        fields[name] = fields[name].astype(np.float32, copy=False)
    fields["tri"] = fields["tri"].astype(np.int32, copy=False)
    fields["landmark_vertex_ids"] = fields["landmark_vertex_ids"].astype(np.int64, copy=False)
    return BFM(**fields, exact=exact, metadata=metadata)


def _axis_major(rows: np.ndarray) -> np.ndarray:
    """(3N, ...) xyz-interleaved rows -> (3N, ...) rows ordered x..x, y..y, z..z."""
    n = rows.shape[0] // 3
    return rows.reshape(n, 3, *rows.shape[1:]).swapaxes(0, 1).reshape(rows.shape)


class DenseDecoder:
    """The dense BFM decoded on the fly: coefficients -> model-space mesh and landmarks.

    ``V = u + W_shp @ alpha_shp + W_exp @ alpha_exp`` (docs/models.md 4) as one matrix product
    over the faces passed in (callers pass only filled face slots, so an empty frame costs
    nothing). The bases are kept axis-major (all x, then all y, then all z), so the product
    is the planar (F, 3, N) layout of the renderer and ``VERTICES``, contiguous, without a
    transpose. numpy on the host, CuPy (cuBLAS) on a GPU: the bases are copied to each CUDA
    device once. float32 throughout: BFM coordinates are micrometres (|u| reaches 1.3e5).
    """

    def __init__(self, bfm: BFM):
        self.bfm = bfm
        self.num_vertices = bfm.num_vertices
        basis = np.concatenate([bfm.w_shp, bfm.w_exp], axis=1)  # (3N, 50)
        lm_basis = np.concatenate([bfm.w_shp_lm, bfm.w_exp_lm], axis=1)  # (204, 50)
        self._host = (
            np.ascontiguousarray(_axis_major(bfm.u), dtype=np.float32),  # (3N,)
            np.ascontiguousarray(_axis_major(basis).T, dtype=np.float32),  # (50, 3N)
            np.ascontiguousarray(_axis_major(bfm.u_lm), dtype=np.float32),  # (204,)
            np.ascontiguousarray(_axis_major(lm_basis).T, dtype=np.float32),  # (50, 204)
        )
        self._device: dict[int, tuple[Any, ...]] = {}  # CUDA device -> copies of _host

    def _tables(self, xp: Any, like: Any) -> tuple[Any, ...]:
        if xp is np:
            return self._host
        device = like.device.id
        if device not in self._device:
            with xp.cuda.Device(device):
                self._device[device] = tuple(xp.asarray(t) for t in self._host)
        return self._device[device]

    @staticmethod
    def _coefficients(alpha_shp: Any, alpha_exp: Any) -> tuple[Any, Any]:
        from tddfa.xp import get_xp

        xp = get_xp(alpha_shp, alpha_exp)
        if alpha_shp.ndim != 2 or alpha_shp.shape[1] != NUM_SHAPE:
            raise ValueError(f"alpha_shp must be (F, {NUM_SHAPE}), got {tuple(alpha_shp.shape)}")
        if tuple(alpha_exp.shape) != (alpha_shp.shape[0], NUM_EXP):
            raise ValueError(
                f"alpha_exp must be ({alpha_shp.shape[0]}, {NUM_EXP}), got {tuple(alpha_exp.shape)}"
            )
        alpha = xp.concatenate([alpha_shp, alpha_exp], axis=1).astype(xp.float32, copy=False)
        return xp, alpha

    def __call__(self, alpha_shp: Any, alpha_exp: Any) -> Any:
        """(F, 40), (F, 10) coefficients -> (F, 3, N) float32 model-space vertices."""
        return self.vertices(alpha_shp, alpha_exp)

    def vertices(self, alpha_shp: Any, alpha_exp: Any) -> Any:
        """(F, 40), (F, 10) coefficients -> (F, 3, N) float32 model-space vertices."""
        xp, alpha = self._coefficients(alpha_shp, alpha_exp)
        mean, basis_t, _, _ = self._tables(xp, alpha)
        flat = alpha @ basis_t
        flat += mean
        return flat.reshape(-1, 3, self.num_vertices)

    def landmarks(self, alpha_shp: Any, alpha_exp: Any) -> Any:
        """(F, 40), (F, 10) coefficients -> (F, 3, 68) float32 model-space landmarks (the
        BFM's exact landmark rows, as tddfa.params.landmark_vertices)."""
        xp, alpha = self._coefficients(alpha_shp, alpha_exp)
        _, _, lm_mean, lm_basis_t = self._tables(xp, alpha)
        return (alpha @ lm_basis_t + lm_mean).reshape(-1, 3, NUM_LANDMARKS)


# float32 rounding of a decoded coordinate stays within 51 * 2^-24 (3e-6) of the sum of its
# terms' magnitudes (|u| + sum |W a|): the bounds of SubsetDecoder allow ten times that
# (they are computed in float32 too)
_ROUNDING = 3e-5


class SubsetDecoder:
    """The dense BFM decoded at a fixed subset of its vertices, on the host, and bounds on
    the others: for a renderer that draws a coarse mesh (a third of the vertices, a third
    of the 23 MB of bases a face reads) yet needs the box of every vertex.

    ``vertices`` is ``u[ids] + W[ids] a`` from row-subsets of the bases made once. The
    other vertices ("the rest") are cut into groups, the cells of a ``cell``-sized grid
    over the mean shape; per group, ``rest_bounds`` gives a centre and a per-axis half-size
    that hold every member for the given coefficients (float32 rounding included): the
    members' distance from the group's mean shape (P) plus, per coefficient, the largest
    difference of a member's basis from the group's mean basis times |a_k| (Q |a|). A
    caller decodes the members of only the groups that could reach past what it needs
    (``rest_mean`` + ``rest_basis`` a, the groups' members contiguous, ``rest_offsets``).

    Args:
        bfm: the model.
        ids: (M,) vertex ids, ascending.
        cell: the groups' grid step in model units (micrometres: 5 mm by default, about
            13 vertices a group; of the 24,066 other vertices of the coarse mesh about 1,500
            are decoded for a face, where larger groups open more members and smaller ones
            cost more bounds).
    """

    def __init__(self, bfm: BFM, ids: np.ndarray, cell: float = 5000.0) -> None:
        n = bfm.num_vertices
        self.ids = np.asarray(ids, np.int64)
        mean = bfm.u.reshape(n, 3).astype(np.float64)
        basis = np.concatenate([bfm.w_shp, bfm.w_exp], axis=1).reshape(n, 3, -1)  # (N, 3, 50)
        self._mean = np.ascontiguousarray(mean[self.ids].T.ravel(), dtype=np.float32)  # (3M,)
        self._basis = np.ascontiguousarray(
            basis[self.ids].transpose(2, 1, 0).reshape(basis.shape[2], -1), dtype=np.float32
        )  # (50, 3M) axis-major
        rest = np.setdiff1d(np.arange(n), self.ids)
        _, group = np.unique(np.floor(mean[rest] / cell), axis=0, return_inverse=True)
        group = group.ravel()
        order = np.argsort(group, kind="stable")
        rest, group = rest[order], group[order]
        groups = int(group.max()) + 1 if len(group) else 0
        count = np.bincount(group, minlength=groups)
        self.rest_offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)  # (G + 1,)
        self.rest_mean = np.ascontiguousarray(mean[rest], dtype=np.float32)  # (R, 3)
        self.rest_basis = np.ascontiguousarray(basis[rest], dtype=np.float32)  # (R, 3, 50)
        members = np.float64(self.rest_basis)
        centre_mean = np.stack([np.bincount(group, mean[rest, a], groups) for a in range(3)], 1)
        centre_mean /= count[:, None]  # (G, 3)
        centre_basis = np.zeros((groups, 3, members.shape[2]))
        np.add.at(centre_basis, group, members)
        centre_basis /= count[:, None, None]
        size = np.zeros((groups, 3))  # P + rounding of |u|, per axis
        np.maximum.at(size, group, np.abs(mean[rest] - centre_mean[group]))
        size += _ROUNDING * (np.abs(centre_mean) + _group_max(np.abs(mean[rest]), group, groups))
        spread = _group_max(np.abs(members - centre_basis[group]), group, groups)  # Q
        spread += _ROUNDING * (np.abs(centre_basis) + _group_max(np.abs(members), group, groups))
        self._centre_mean = np.ascontiguousarray(centre_mean.ravel(), dtype=np.float32)
        self._centre_basis = np.ascontiguousarray(
            centre_basis.reshape(groups * 3, -1).T, dtype=np.float32
        )  # (50, 3G)
        self._size = np.ascontiguousarray(size.ravel(), dtype=np.float32)
        self._spread = np.ascontiguousarray(spread.reshape(groups * 3, -1).T, dtype=np.float32)

    @property
    def groups(self) -> int:
        return len(self.rest_offsets) - 1

    def vertices(self, alpha: np.ndarray) -> np.ndarray:
        """(F, 50) float32 coefficients (shape, then expression) -> (F, 3, M) float32."""
        flat = alpha @ self._basis
        flat += self._mean
        return flat.reshape(alpha.shape[0], 3, len(self.ids))

    def rest_bounds(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(50,) float32 coefficients of one face -> each group's (G, 3) float32 centre and
        half-size per axis: every member lies within (NaN or infinity where a coefficient
        is not finite)."""
        centre = alpha @ self._centre_basis
        centre += self._centre_mean
        size = np.abs(alpha) @ self._spread
        size += self._size
        return centre.reshape(-1, 3), size.reshape(-1, 3)


def _group_max(values: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """Per group, the largest of ``values`` (R, ...) over its members (R,) -> (G, ...)."""
    out = np.zeros((groups, *values.shape[1:]))
    np.maximum.at(out, group, values)
    return out
