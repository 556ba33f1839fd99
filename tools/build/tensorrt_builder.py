"""ONNX -> TensorRT engine (plan) with the TensorRT Python API, plus the equivalent trtexec line.

Engines are specific to the GPU and the TensorRT version: build them with the TensorRT of
the tritonserver image that serves them. The file name says both
(``face_detector.H100.trt10.3.0.fp16.plan``) and a JSON beside it records them with the
precision and the optimisation profiles.

Profiles (see :func:`default_profiles`) keep the batch axis of every network in
1..max_batch_size (frames, Triton's dynamic batching), the face axis in 1..K, and the
detector's uint8 frames between the smallest and the largest accepted frame size (the whole
detector graph) or at the canvas (the bare network of the python flavour).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tddfa.config import REGRESSOR_SIZE, PipelineConfig
from tddfa.files import write_bytes

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
Profile = Mapping[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)

DEFAULT_WORKSPACE_BYTES = 4 << 30
_MISSING_TENSORRT = (
    "TensorRT builder not installed: use the NGC tritonserver container or pip install tensorrt"
)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or ImportError with the fix."""
    try:
        import tensorrt
    except ImportError as error:
        raise ImportError(_MISSING_TENSORRT) from error
    return tensorrt


DETECTOR_KINDS = ("graph", "network")


def default_profiles(
    cfg: PipelineConfig,
    max_batch_size: int,
    opt_batch_size: int = 1,
    *,
    detector: str = "graph",
) -> dict[str, dict[str, tuple[Shape, Shape, Shape]]]:
    """Optimisation profiles of the two networks: {model: {input: (min, opt, max)}}.

    Batch (frames) 1..max_batch_size, optimised for ``opt_batch_size``; faces 1..K, optimised
    for K. The detector:

    - ``detector="graph"`` (tensorrt flavour, tools/build/detector_graph.py): ``IMAGE`` uint8
      (N, H, W, 3) of any frame size the service accepts: from ``min_image_size`` square up
      to ``max_image_height`` x ``max_image_width``, optimised for the canvas size (the
      usual frame: 720x1280 by default);
    - ``detector="network"`` (the bare FaceBoxes the python flavour's runner feeds with the
      canvas): ``DETECTOR_INPUT`` (N, 3, Hc, Wc), the canvas only.
    """
    if max_batch_size < 1 or not 1 <= opt_batch_size <= max_batch_size:
        raise ValueError(
            f"need 1 <= opt_batch_size ({opt_batch_size}) <= max_batch_size ({max_batch_size})"
        )
    if detector not in DETECTOR_KINDS:
        raise ValueError(f"detector must be one of {DETECTOR_KINDS}, got {detector!r}")
    k, b, o = cfg.max_faces, max_batch_size, opt_batch_size
    h, w = cfg.canvas_height, cfg.canvas_width
    crop = (3, REGRESSOR_SIZE, REGRESSOR_SIZE)
    if detector == "graph":
        side = cfg.min_image_size
        detector_profile = {
            "IMAGE": (
                (1, side, side, 3),
                (o, h, w, 3),
                (b, cfg.max_image_height, cfg.max_image_width, 3),
            )
        }
    else:
        detector_profile = {"DETECTOR_INPUT": ((1, 3, h, w), (o, 3, h, w), (b, 3, h, w))}
    return {
        "face_detector": detector_profile,
        "face_regressor": {"CROPS": ((1, 1, *crop), (o, k, *crop), (b, k, *crop))},
    }


def _shape_arg(profile: Profile, which: int) -> str:
    return ",".join(
        f"{name}:{'x'.join(map(str, shapes[which]))}" for name, shapes in profile.items()
    )


def trtexec_command(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    profiles: Profile,
    fp16: bool = True,
    timing_cache: str | os.PathLike | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> str:
    """The trtexec command line that builds the same engine as :func:`build_engine`."""
    args = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--minShapes={_shape_arg(profiles, 0)}",
        f"--optShapes={_shape_arg(profiles, 1)}",
        f"--maxShapes={_shape_arg(profiles, 2)}",
        f"--memPoolSize=workspace:{workspace_bytes >> 20}M",
    ]
    if fp16:
        args.append("--fp16")
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(args)


def gpu_name(device: int = 0) -> str:
    """Marketing name of CUDA device ``device`` (nvidia-smi, else torch), or "gpu"."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", f"--id={device}"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.strip()
            if out:
                return out.splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError):
            log.debug("nvidia-smi could not name GPU %d", device, exc_info=True)
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(device)
    except ImportError:
        pass
    return "gpu"


_NAME_NOISE = re.compile(r"^(nvidia|geforce|tesla|quadro|\d+gb|hbm\d*e?|pcie|sxm\d*|nvl|mig.*)$")


def gpu_tag(name: str) -> str:
    """Short file-name tag of a GPU name: "NVIDIA H100 80GB HBM3" -> "H100"."""
    tokens = [t for t in re.split(r"[\s\-_/]+", name) if t and not _NAME_NOISE.match(t.lower())]
    tag = re.sub(r"[^A-Za-z0-9]", "", "".join(tokens))
    return tag or "gpu"


def _check_profiles(network: Any, profiles: Profile) -> None:
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    problems = [f"no profile for input {name}" for name in inputs if name not in profiles]
    problems += [f"profile names {name}, not an input" for name in profiles if name not in inputs]
    for name, (lo, opt, hi) in profiles.items():
        if name not in inputs:
            continue
        dims = tuple(inputs[name].shape)
        if not len(lo) == len(opt) == len(hi) == len(dims):
            problems.append(f"{name}: profile ranks differ from the input's rank {len(dims)}")
            continue
        for axis, (d, a, b, c) in enumerate(zip(dims, lo, opt, hi, strict=True)):
            if not 1 <= a <= b <= c:
                problems.append(f"{name} axis {axis}: need 1 <= min <= opt <= max, got {a, b, c}")
            elif d >= 0 and not a == b == c == d:
                problems.append(f"{name} axis {axis} is fixed at {d}, profile gives {a, b, c}")
    if problems:
        raise ValueError(
            "optimisation profiles do not fit the network:\n  " + "\n  ".join(problems)
        )


def build_engine(
    onnx_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    profiles: Profile | Sequence[Profile],
    fp16: bool = True,
    timing_cache: str | os.PathLike | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    device: int = 0,
) -> Path:
    """Build a serialized TensorRT engine from ``onnx_path`` into ``out_dir``; return its path.

    ``profiles``: one {input name: (min, opt, max) shape} mapping or a sequence of them (one
    optimisation profile each). ``fp16`` allows float16 tactics (the caller decides per
    network: the repository builder keeps the detector in fp32). The timing cache is loaded
    if present and saved back after the build. Engine and JSON are written atomically.
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    profile_list = [profiles] if isinstance(profiles, Mapping) else list(profiles)
    if not profile_list:
        raise ValueError("build_engine needs at least one optimisation profile")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n  " + "\n  ".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    for profile_shapes in profile_list:
        _check_profiles(network, profile_shapes)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache_bytes = (
        cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    )
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)

    precision = "fp16" if fp16 else "fp32"
    name = gpu_name(device)
    engine_path = (
        out_dir / f"{onnx_path.stem}.{gpu_tag(name)}.trt{trt.__version__}.{precision}.plan"
    )
    log.info(
        "Building %s (equivalent: %s)",
        engine_path.name,
        trtexec_command(
            onnx_path,
            engine_path,
            profiles=profile_list[0],
            fp16=fp16,
            timing_cache=cache_path,
            workspace_bytes=workspace_bytes,
        ),
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT failed to build {onnx_path} (see the TensorRT log above); try --fp32 or a "
            "larger workspace"
        )
    write_bytes(engine_path, bytes(serialized))
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    record = {
        "onnx": str(onnx_path),
        "tensorrt_version": trt.__version__,
        "gpu": name,
        "precision": precision,
        "workspace_bytes": workspace_bytes,
        "profiles": [
            {k: [list(s) for s in v] for k, v in profile.items()} for profile in profile_list
        ],
    }
    write_bytes(engine_path.with_suffix(".json"), json.dumps(record, indent=2).encode())
    return engine_path
