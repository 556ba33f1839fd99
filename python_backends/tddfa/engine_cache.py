"""TensorRT engines for the python flavour, built from ``model.onnx`` when a model loads.

A python-flavour repository holds ``model.onnx`` (not ``model.plan``: engines belong to one
GPU and one TensorRT version, which the build machine may not have). When ``tensorrt``
imports where the model loads, :func:`tddfa.runners.make_runner` asks :func:`cached_engine`
for an engine: the first instance builds it (minutes) under a file lock, every other
instance and every later start reuses it. The cache key is the GPU, the TensorRT version,
the ONNX file's content, the optimisation profiles and the precision, so a rebuilt
repository, another GPU or another TensorRT never gets a stale engine.

The profiles come from ``tensorrt_profiles.json`` beside ``model.onnx`` (the repository
builder writes it with :func:`write_profiles`; see ``tools/tensorrt_builder.default_profiles``)
or from the caller.

The build itself is ``tddfa_tools.build.tensorrt_builder.build_engine`` (same distribution,
imported only here, when an engine is needed).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tddfa.runners.io import MODEL_ONNX, MODEL_PLAN

LOG = logging.getLogger(__name__)

PROFILES_FILE = "tensorrt_profiles.json"
CACHE_FOLDER = "engines"  # inside the version folder when it is writable

Shape = Sequence[int]
Profile = Mapping[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)


def write_profiles(version_dir: str | os.PathLike, profile: Profile) -> Path:
    """Write ``profile`` ({input: (min, opt, max)}) as ``tensorrt_profiles.json``."""
    path = Path(version_dir) / PROFILES_FILE
    text = json.dumps({name: [list(s) for s in shapes] for name, shapes in profile.items()})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    return path


def read_profiles(version_dir: str | os.PathLike) -> dict[str, tuple] | None:
    """The profile written by :func:`write_profiles`, or None when there is none."""
    path = Path(version_dir) / PROFILES_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    try:
        profile = {
            name: tuple(tuple(int(d) for d in s) for s in shapes) for name, shapes in raw.items()
        }
    except (AttributeError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: expected {{input: [min, opt, max]}}, got {raw!r}") from error
    if any(len(shapes) != 3 for shapes in profile.values()):
        raise ValueError(f"{path}: every input needs [min, opt, max] shapes, got {raw!r}")
    return profile


def default_cache_dir(version_dir: str | os.PathLike) -> Path:
    """``<version_dir>/engines`` when the version folder is writable, else
    ``~/.cache/tddfa/engines/<model name>`` (a read-only repository mount)."""
    version_dir = Path(version_dir)
    if os.access(version_dir, os.W_OK):
        return version_dir / CACHE_FOLDER
    return Path.home() / ".cache" / "tddfa" / CACHE_FOLDER / version_dir.parent.name


def cache_key(onnx_path: Path, profile: Profile, fp16: bool) -> str:
    """16 hex digits of sha256 over the ONNX file, the profile and the precision."""
    digest = hashlib.sha256()
    with open(onnx_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    shapes = {name: [list(s) for s in shapes] for name, shapes in sorted(profile.items())}
    digest.update(json.dumps(shapes, sort_keys=True).encode())
    digest.update(b"fp16" if fp16 else b"fp32")
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created): other processes and threads wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_engine(
    onnx_path: str | os.PathLike,
    profile: Profile,
    *,
    fp16: bool,
    device: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The TensorRT engine of ``onnx_path`` for this GPU and TensorRT: reused or built.

    Args:
        onnx_path: the network (``model.onnx`` of a version folder).
        profile: {input name: (min, opt, max) shape}, one optimisation profile.
        fp16: allow float16 tactics.
        device: CUDA device index (names the GPU in the file name).
        cache_dir: where engines live; default :func:`default_cache_dir`.

    Returns:
        Path of ``<cache>/<key>/model.<GPU>.trt<version>.<precision>.plan`` (with the JSON
        record beside it). Raises ImportError without the TensorRT builder, RuntimeError when
        TensorRT cannot parse or build the network.
    """
    from tddfa_tools.build import tensorrt_builder  # the builder ships in the same distribution

    trt = tensorrt_builder.import_tensorrt()
    onnx_path = Path(onnx_path)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(onnx_path.parent)
    folder = cache_dir / cache_key(onnx_path, profile, fp16)
    pattern = f"{onnx_path.stem}.{tensorrt_builder.gpu_tag(tensorrt_builder.gpu_name(device))}"
    pattern += f".trt{trt.__version__}.*.plan"
    with _locked(cache_dir / f"{folder.name}.lock"):
        found = sorted(folder.glob(pattern))
        if found:
            LOG.info("%s: reusing TensorRT engine %s", onnx_path, found[0])
            return found[0]
        LOG.warning(
            "%s: building a TensorRT engine for this GPU (%s, TensorRT %s); this takes "
            "minutes once, later loads reuse %s",
            onnx_path,
            tensorrt_builder.gpu_name(device),
            trt.__version__,
            folder,
        )
        return tensorrt_builder.build_engine(
            onnx_path,
            folder,
            profiles=profile,
            fp16=fp16,
            timing_cache=cache_dir / "timing.cache",
            device=device,
        )


def engine_for(
    model_dir: str | os.PathLike,
    device_index: int,
    fp16: bool,
    profile: Mapping[str, Any] | None,
    engine_cache: str | os.PathLike | None,
) -> Path | None:
    """The TensorRT engine for the version folder ``model_dir``: ``model.plan`` if present,
    else the engine of ``model.onnx`` for this GPU (:func:`cached_engine`, with ``profile`` or
    ``tensorrt_profiles.json``), else None, logged (the caller uses its next runner).

    Needs ``tensorrt`` importable (the caller checks); never raises for a failed build."""
    model_dir = Path(model_dir)
    plan, onnx_path = model_dir / MODEL_PLAN, model_dir / MODEL_ONNX
    if plan.is_file():
        return plan
    if not onnx_path.is_file():
        return None
    if profile is None:
        profile = read_profiles(model_dir)
    if profile is None:
        LOG.info(
            "%s: no %s beside %s, so no TensorRT engine is built (the repository builder "
            "writes it); using the next runner",
            model_dir,
            PROFILES_FILE,
            MODEL_ONNX,
        )
        return None
    try:
        return cached_engine(
            onnx_path, profile, fp16=fp16, device=device_index, cache_dir=engine_cache
        )
    except Exception as exc:  # noqa: BLE001 - no builder, a parser/build error: fall back
        LOG.warning("%s: no TensorRT engine (%s); using the next runner", model_dir, exc)
        return None
