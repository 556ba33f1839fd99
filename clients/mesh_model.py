"""The face model a client needs to export animated meshes: the server's BFM and the BFM's
texture coordinates.

An animated mesh is the BFM itself (mean, shape and expression directions) driven by the
parameters the server returns, so the client must hold the same dense bases as the
server's ``face_vertices`` step. They come from ``--bfm`` (a ``bfm.npz``, or the model
repository the server serves), else from the cache `tddfa build` fills (--models-dir),
built from the assets when it is missing. The server says which kind it decodes with
(exact or approximate, face_aligner's ``bfm`` parameter); a client holding the other
kind stops with the fix instead of writing meshes that do not match the video.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from pathlib import Path

import numpy as np

from tddfa.bfm import BFM, load_bfm

# Where a model repository keeps the dense tables (every step that reads them has a copy).
REPOSITORY_BFM = Path("face_vertices") / "1" / "bfm.npz"
BFM_KINDS = {True: "exact", False: "approximate"}


class FaceModelMismatch(ValueError):
    """The client's BFM is not the kind the server decodes with."""


@dataclasses.dataclass(frozen=True, eq=False)
class FaceModel:
    """``bfm`` (tddfa.bfm.BFM) and ``uv`` (N, 2) float32 texture coordinates in glTF's
    convention (origin at the image's top left, v down)."""

    bfm: BFM
    uv: np.ndarray
    source: Path

    @property
    def kind(self) -> str:
        return BFM_KINDS[self.bfm.exact]

    @functools.cached_property
    def shape_gain(self) -> float:
        """A bound on any vertex's displacement (micrometres) per unit norm of shape
        coefficients: max over vertices of the Frobenius norm of its (3, 40) basis rows."""
        squares = np.square(self.bfm.w_shp, dtype=np.float64)
        return float(np.sqrt(squares.reshape(self.bfm.num_vertices, -1).sum(axis=1).max()))

    def check_served(self, served_kind: str) -> None:
        """FaceModelMismatch unless ``served_kind`` (the server's ``bfm`` parameter) is
        this model's kind or unknown."""
        if served_kind in BFM_KINDS.values() and served_kind != self.kind:
            raise FaceModelMismatch(
                f"the server decodes faces with the {served_kind} BFM but {self.source} holds "
                f"the {self.kind} one: pass --bfm with the server's tables (its model "
                f"repository, or {REPOSITORY_BFM} inside it)"
            )


def texture_coordinates(asset_dir: str | os.PathLike | None = None) -> np.ndarray:
    """(N, 2) float32 BFM texture coordinates of the no-neck vertices, glTF's convention
    (BFM_UV.mat has v up: flipped)."""
    from tddfa_tools.assets.resolve import resolve_assets
    from tddfa_tools.assets.safe_load import bfm_uv_coordinates

    found = resolve_assets(["BFM_UV.mat", "indices.npy"], asset_dir=asset_dir)
    uv = bfm_uv_coordinates(found["BFM_UV.mat"], found["indices.npy"]).astype(np.float32)
    uv[:, 1] = 1.0 - uv[:, 1]
    return uv


def bfm_path(bfm: str | os.PathLike | None, asset_dir: str | os.PathLike | None) -> Path:
    """The tables to load: ``bfm`` (a file, or a model repository holding one), else
    `tddfa build`'s cache (built from the assets if need be)."""
    if bfm is None:
        from tddfa_tools.build.exports import bfm_tables

        return bfm_tables(Path(asset_dir) if asset_dir is not None else None)
    path = Path(bfm)
    if path.is_dir():
        path = path / REPOSITORY_BFM
    if not path.is_file():
        raise FileNotFoundError(
            f"--bfm {bfm}: no BFM tables there; pass a bfm.npz or the model repository the "
            "server serves (`tddfa build` writes it)"
        )
    return path


def load_face_model(
    bfm: str | os.PathLike | None = None, asset_dir: str | os.PathLike | None = None
) -> FaceModel:
    """The :class:`FaceModel` from ``bfm`` (see :func:`bfm_path`) and the assets' UV table."""
    path = bfm_path(bfm, asset_dir)
    return FaceModel(bfm=load_bfm(path), uv=texture_coordinates(asset_dir), source=path)


class MeshSources:
    """What ``--mesh`` of many files needs, loaded once on first use (thread-safe): the
    BFM's triangles and texture coordinates for pictures, the :class:`FaceModel` for videos."""

    def __init__(self, bfm: str | os.PathLike | None, asset_dir: str | os.PathLike | None):
        self._bfm, self._asset_dir = bfm, asset_dir
        self._lock = threading.Lock()
        self._tables = None
        self._model: FaceModel | None = None

    def tables(self):
        """tddfa_clients.mesh.MeshTables."""
        from tddfa_clients.mesh import mesh_tables

        with self._lock:
            if self._tables is None:
                self._tables = mesh_tables(self._asset_dir)
            return self._tables

    def model(self) -> FaceModel:
        with self._lock:
            if self._model is None:
                self._model = load_face_model(self._bfm, self._asset_dir)
            return self._model
