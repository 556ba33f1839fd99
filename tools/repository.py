"""`tddfa build`: write a servable model repository for a flavour, a device, K and a canvas.

The committed ``model_repository/`` holds the configs and adapters of the default
(python flavour, CPU, K = 8, 720x1280 canvas). This tool copies it into a build folder,
adds the built networks and tables, and rewrites the configs with Triton's protobuf
schema for the chosen options; a rewritten repository is checked before it replaces
the old one, so a failed build never leaves a half-written repository behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tddfa.config import NUM_EXP, NUM_LANDMARKS, NUM_PARAMS, NUM_SHAPE, NUM_VERTICES, PipelineConfig
from tddfa.priors import prior_boxes
from tddfa_tools.model_config import check_ensemble, load_repository, save_config

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "model_repository"
NETWORKS = ("face_detector", "face_regressor", "bfm_decoder")
FLAVOURS = ("python", "onnxruntime", "tensorrt")
# The steps a user may size with --instance-count: every model of the template but the ensemble.
TEMPLATE_MODELS = tuple(
    sorted(p.parent.name for p in TEMPLATE.glob("*/config.pbtxt") if p.parent.name != "tddfa")
)
# Bump when an export changes, so cached ONNX files are rebuilt.
EXPORT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    flavour: str = "python"
    device: str = "cpu"  # cpu | gpu
    pipeline: PipelineConfig = PipelineConfig()
    max_batch_size: int = 8
    out: Path = REPO_ROOT / "build" / "model_repository"
    models_dir: Path = REPO_ROOT / "build" / "models"
    asset_dir: Path | None = None
    regressor: str = "auto"  # auto | mb05 | mb1
    fp16: bool = True  # network precision on GPU (TensorRT engines, PyTorch CUDA runner)
    instances: int = 1  # instances of each step (GPU builds may want more)
    instance_counts: tuple[tuple[str, int], ...] = ()  # per-model overrides of `instances`


@dataclasses.dataclass(frozen=True)
class BuiltModels:
    """Exported networks and tables, cached in ``models_dir``."""

    detector: Path
    regressor: Path
    bfm_decoder: Path
    bfm: Path
    triangles: Path
    regressor_name: str  # mb05 | mb1
    bfm_exact: bool
    torch_weights: dict[str, Path]  # per network: what the PyTorch CUDA runner rebuilds it from


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cached(out: Path, sources: list[Path], build) -> Path:
    """Run ``build(out)`` unless ``out`` was built from the same sources by this version."""
    key = {"version": EXPORT_VERSION, "sources": {p.name: _sha256(p) for p in sources}}
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
    from tddfa_tools.assets import ASSETS, resolve_assets

    needed = {name: a for name, a in ASSETS.items() if not name.endswith(".jpg")}
    found = resolve_assets([n for n, a in needed.items() if not a.optional], asset_dir=asset_dir)
    optional = [n for n, a in needed.items() if a.optional]
    found.update(resolve_assets(optional, asset_dir=asset_dir, download=False))
    return found


def export_models(options: BuildOptions) -> BuiltModels:
    """Resolve the assets, then export (or reuse) the three networks and the BFM tables."""
    from tddfa.bfm import load_bfm
    from tddfa_tools.bfm_builder import build_bfm, export_bfm_decoder
    from tddfa_tools.export_onnx import export_face_detector, export_face_regressor

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
    detector = _cached(
        out / "face_detector.onnx",
        [assets["FaceBoxesProd.pth"]],
        lambda p: export_face_detector(assets["FaceBoxesProd.pth"], p),
    )
    regressor_onnx = _cached(
        out / f"face_regressor_{regressor}.onnx",
        [weights],
        lambda p: export_face_regressor(weights, p),
    )
    bfm_sources = [p for p in assets.values() if p is not None and p.suffix != ".pth"]
    bfm = _cached(out / "bfm.npz", bfm_sources, lambda p: build_bfm(assets, p))
    model = load_bfm(bfm)
    decoder = _cached(out / "bfm_decoder.onnx", [bfm], lambda p: export_bfm_decoder(model, p))
    triangles = out / "triangles.npy"
    np.save(triangles, np.ascontiguousarray(model.tri, dtype=np.int32))
    if not model.exact:
        log.warning("BFM: %s", model.description())
    return BuiltModels(
        detector,
        regressor_onnx,
        decoder,
        bfm,
        triangles,
        regressor,
        model.exact,
        torch_weights={
            "face_detector": assets["FaceBoxesProd.pth"],
            "face_regressor": weights,
            "bfm_decoder": bfm,
        },
    )


def tensor_dims(pipeline: PipelineConfig) -> dict[str, list[int]]:
    """Dims (without the batch axis) of every fixed-size tensor of the ensemble."""
    k = pipeline.max_faces
    priors = len(prior_boxes(pipeline.canvas_height, pipeline.canvas_width))
    return {
        "DETECTOR_INPUT": [3, pipeline.canvas_height, pipeline.canvas_width],
        "LOC": [priors, 4],
        "CONF": [priors, 2],
        "FACE_BOXES": [k, 5],
        "ROI_BOXES": [k, 4],
        "CROPS": [k, 3, 120, 120],
        "PARAMS_NORM": [k, NUM_PARAMS],
        "PARAMS": [k, NUM_PARAMS],
        "POSE": [k, 3],
        "LANDMARKS": [k, 3, NUM_LANDMARKS],
        "ALPHA_SHP": [k, NUM_SHAPE],
        "ALPHA_EXP": [k, NUM_EXP],
        "TRANSFORM": [k, 3, 4],
        "MODEL_VERTICES": [k, 3, NUM_VERTICES],
        "VERTICES": [k, 3, NUM_VERTICES],
    }


def configure(configs: dict, options: BuildOptions, models: BuiltModels) -> None:
    """Rewrite the template configs in place for ``options``."""
    dims = tensor_dims(options.pipeline)
    pipeline_values = options.pipeline.to_parameters()
    gpu = options.device == "gpu"
    for name, config in configs.items():
        config.max_batch_size = options.max_batch_size
        for tensor in list(config.input) + list(config.output):
            if tensor.name in dims:
                del tensor.dims[:]
                tensor.dims.extend(dims[tensor.name])
        if name == "tddfa":
            continue
        for key in config.parameters:
            if key in pipeline_values:
                config.parameters[key].string_value = pipeline_values[key]
        for group in config.instance_group:
            group.kind = group.KIND_GPU if gpu else group.KIND_CPU
            group.count = dict(options.instance_counts).get(name, options.instances)
        if name in NETWORKS and options.flavour != "python":
            config.ClearField("backend")
            config.platform = (
                "onnxruntime_onnx" if options.flavour == "onnxruntime" else "tensorrt_plan"
            )
        elif gpu:  # python steps take and give device tensors (DLPack), never host copies
            config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
            if name in NETWORKS:  # PyTorch CUDA runner precision
                config.parameters["precision"].string_value = _precision(name, options.fp16)
    bfm_kind = "exact" if models.bfm_exact else "approximate"
    configs["landmark_to_vertex"].parameters["regressor"].string_value = models.regressor_name
    for name in ("landmark_to_vertex", "bfm_decoder"):
        configs[name].parameters["bfm"].string_value = bfm_kind


def _precision(network: str, fp16: bool) -> str:
    """The PyTorch CUDA runner's precision of ``network`` in a GPU build.

    The detector stays fp32: its float16 scores reorder near-tied candidates before NMS
    (emma.jpg's largest face: another box wins, 9 px off, landmarks 5.8 px off the
    reference), and it is not the GPU's bottleneck. The BFM decoder's values exceed
    float16 (the runner keeps it fp32 anyway).
    """
    return "fp16" if fp16 and network == "face_regressor" else "fp32"


def _network_file(
    name: str, onnx: Path, torch_weights: Path, version_dir: Path, options: BuildOptions
) -> None:
    if options.flavour == "tensorrt":
        from tddfa_tools.tensorrt_builder import build_engine, default_profiles

        profiles = default_profiles(options.pipeline, options.max_batch_size)[name]
        engine = build_engine(
            onnx,
            options.models_dir / "engines",
            profiles=profiles,
            fp16=options.fp16,
            timing_cache=options.models_dir / "engines" / "timing.cache",
        )
        shutil.copy2(engine, version_dir / "model.plan")
    else:
        shutil.copy2(onnx, version_dir / "model.onnx")
    if options.flavour == "python" and options.device == "gpu":
        # without TensorRT, the python runner rebuilds the network in PyTorch from these
        shutil.copy2(torch_weights, version_dir / torch_weights.name)
    if options.flavour != "python":
        (version_dir / "model.py").unlink()


def build_repository(options: BuildOptions) -> Path:
    """Build the repository into ``options.out`` (replaced only when the build succeeded)."""
    if options.flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {options.flavour!r}: choose one of {FLAVOURS}")
    models = export_models(options)
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        repo = staging / "repo"
        shutil.copytree(TEMPLATE, repo, ignore=shutil.ignore_patterns("__pycache__"))
        (repo / "tddfa" / "1").mkdir(exist_ok=True)  # ensembles need an (empty) version folder
        for name, onnx in zip(
            NETWORKS, (models.detector, models.regressor, models.bfm_decoder), strict=True
        ):
            _network_file(name, onnx, models.torch_weights[name], repo / name / "1", options)
        shutil.copy2(models.bfm, repo / "landmark_to_vertex" / "1" / "bfm.npz")
        shutil.copy2(models.triangles, repo / "face_renderer" / "1" / "triangles.npy")

        configs = load_repository(repo)
        configure(configs, options, models)
        problems = check_ensemble(configs)
        if problems:
            raise RuntimeError("built repository is inconsistent:\n  " + "\n  ".join(problems))
        for name, config in configs.items():
            save_config(config, repo / name / "config.pbtxt")
        (repo / "BUILD.json").write_text(
            json.dumps(
                {
                    "flavour": options.flavour,
                    "device": options.device,
                    "max_batch_size": options.max_batch_size,
                    "fp16": options.fp16,
                    "regressor": models.regressor_name,
                    "bfm": "exact" if models.bfm_exact else "approximate",
                    **dataclasses.asdict(options.pipeline),
                },
                indent=2,
            )
        )
        if out.exists():
            old = staging / "old"
            out.rename(old)
        repo.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "model repository written to %s (%s flavour, %s)", out, options.flavour, options.device
    )
    return out


def _instance_counts(items: list[str]) -> tuple[tuple[str, int], ...]:
    counts = []
    for item in items:
        name, _, count = item.partition("=")
        if name not in TEMPLATE_MODELS or not count.isdigit() or int(count) < 1:
            raise ValueError(
                f"--instance-count must be MODEL=N with N >= 1 and MODEL one of "
                f"{', '.join(TEMPLATE_MODELS)}; got {item!r}"
            )
        counts.append((name, int(count)))
    return tuple(counts)


def _canvas(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"--canvas must look like 720x1280 (HxW), got {text!r}") from exc
    return height, width


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "build",
        help="build the Triton model repository (networks, BFM, configs)",
        description="Export the networks from the 3DDFA_V2 weights and write a model repository. "
        "With no options: the CPU default (python flavour, onnxruntime) from TDDFA_ASSET_DIR.",
    )
    parser.add_argument(
        "--flavour",
        choices=FLAVOURS,
        default="python",
        help="how the three networks are served (default: python)",
    )
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument(
        "--max-faces",
        type=int,
        default=PipelineConfig.max_faces,
        help="K, face slots per frame (default: %(default)s)",
    )
    parser.add_argument(
        "--canvas", default="720x1280", help="detector canvas HxW (default: %(default)s)"
    )
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--instances", type=int, default=1, help="instances per step")
    parser.add_argument(
        "--instance-count",
        action="append",
        default=[],
        metavar="MODEL=N",
        help="instances of one step, overriding --instances (repeatable), "
        "e.g. --instance-count face_renderer=4",
    )
    parser.add_argument(
        "--regressor",
        choices=("auto", "mb05", "mb1"),
        default="auto",
        help="auto: mb1 if its weights are present, else mb05",
    )
    parser.add_argument(
        "--fp32",
        action="store_true",
        help="GPU networks in fp32: TensorRT engines and the PyTorch CUDA runner (default fp16)",
    )
    parser.add_argument(
        "--assets", type=Path, default=None, help="asset folder (else TDDFA_ASSET_DIR)"
    )
    parser.add_argument("--out", type=Path, default=BuildOptions.out)
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=BuildOptions.models_dir,
        help="cache of exported ONNX files and BFM tables",
    )
    parser.set_defaults(func=_run)


def _run(args) -> int:
    height, width = _canvas(args.canvas)
    options = BuildOptions(
        flavour=args.flavour,
        device=args.device,
        pipeline=PipelineConfig(max_faces=args.max_faces, canvas_height=height, canvas_width=width),
        max_batch_size=args.max_batch_size,
        out=args.out,
        models_dir=args.models_dir,
        asset_dir=args.assets,
        regressor=args.regressor,
        fp16=not args.fp32,
        instances=args.instances,
        instance_counts=_instance_counts(args.instance_count),
    )
    build_repository(options)
    return 0
