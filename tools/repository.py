"""`tddfa build`: write a servable model repository for a flavour, a device, K and a canvas.

The committed ``model_repository/`` holds the configs and adapters of the default
(python flavour, CPU, K = 8, 720x1280 canvas). This tool copies it into a build folder,
adds the built networks and tables, and rewrites the configs with Triton's protobuf
schema for the chosen options; a rewritten repository is checked (ensemble wiring, the
contract, the BLS calls) before it replaces the old one, so a failed build never leaves a
half-written repository behind. Where each flavour runs the networks: tddfa_tools.flavours.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from tddfa.config import PipelineConfig
from tddfa.contract import SEQUENCE_ENSEMBLE, STATELESS_ENSEMBLE
from tddfa_tools.flavours import (
    NETWORK_CHOICES,
    check_native_models,
    configure_networks,
    layout_for,
    link,
    place_network_files,
)
from tddfa_tools.graph_config import graph_problems, write_graph
from tddfa_tools.model_config import (
    check_bls,
    check_ensemble,
    load_repository,
    save_config,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "model_repository"
FLAVOURS = ("python", "onnxruntime", "tensorrt")
ENSEMBLES = (STATELESS_ENSEMBLE, SEQUENCE_ENSEMBLE)
# Models that read the BFM tables (<version>/bfm.npz) and say which BFM they use.
BFM_MODELS = ("face_aligner", "face_tracker", "face_renderer", "face_vertices")
# The steps a user may size with --instance-count: every model of the template but the ensembles.
TEMPLATE_MODELS = tuple(
    sorted(p.parent.name for p in TEMPLATE.glob("*/config.pbtxt") if p.parent.name not in ENSEMBLES)
)
# Bump when an export changes, so cached ONNX files are rebuilt.
EXPORT_VERSION = 1
MAX_BATCH_SIZE_LIMIT = 32


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
    gpus: tuple[int, ...] = ()  # GPU builds: the devices every step gets instances on
    # python flavour: the networks run inside the steps ("in-process") or as models of their
    # own that the steps call through BLS ("models"); None: the flavour's only/default choice
    networks: str | None = None

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {self.flavour!r}: choose one of {FLAVOURS}")
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device must be cpu or gpu, got {self.device!r}")
        if self.flavour == "tensorrt" and self.device != "gpu":
            raise ValueError("--flavour tensorrt needs --device gpu: TensorRT engines run on GPUs")
        if self.networks is None:
            default = "in-process" if self.flavour == "python" else "models"
            object.__setattr__(self, "networks", default)
        layout_for(self.flavour, self.networks)  # refuses a combination that does not exist
        if not 1 <= self.max_batch_size <= MAX_BATCH_SIZE_LIMIT:
            raise ValueError(
                f"--max-batch-size must be 1..{MAX_BATCH_SIZE_LIMIT}, got {self.max_batch_size}"
            )
        if self.pipeline.max_faces < 1:
            raise ValueError(f"--max-faces must be >= 1, got {self.pipeline.max_faces}")
        if self.instances < 1:
            raise ValueError(f"--instances must be >= 1, got {self.instances}")
        if self.gpus and self.device != "gpu":
            raise ValueError("--gpus needs --device gpu")


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cached(out: Path, sources: list[Path], build, settings: dict | None = None) -> Path:
    """Run ``build(out)`` unless ``out`` was built from the same sources and ``settings`` by
    this version."""
    key = {"version": EXPORT_VERSION, "sources": {p.name: _sha256(p) for p in sources}}
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
    from tddfa_tools.assets import ASSETS, resolve_assets

    needed = {name: a for name, a in ASSETS.items() if not name.endswith(".jpg")}
    found = resolve_assets([n for n, a in needed.items() if not a.optional], asset_dir=asset_dir)
    optional = [n for n, a in needed.items() if a.optional]
    found.update(resolve_assets(optional, asset_dir=asset_dir, download=False))
    return found


def _bfm_tables(assets: dict[str, Path], models_dir: Path) -> Path:
    """models_dir/bfm.npz, built from ``assets`` unless cached from the same files."""
    from tddfa_tools.bfm_builder import build_bfm

    sources = [p for p in assets.values() if p is not None and p.suffix != ".pth"]
    return _cached(models_dir / "bfm.npz", sources, lambda p: build_bfm(assets, p))


def bfm_tables(asset_dir: Path | None = None, models_dir: Path | None = None) -> Path:
    """The BFM tables (bfm.npz) `tddfa build` puts in a repository, from its cache
    (``models_dir``, default build/models), built from the assets if missing or stale."""
    return _bfm_tables(_build_assets(asset_dir), models_dir or BuildOptions.models_dir)


def export_models(options: BuildOptions) -> BuiltModels:
    """Resolve the assets, then export (or reuse) the networks and the BFM tables: the bare
    FaceBoxes for the python flavour, the whole detector graph for the native ones."""
    from tddfa.bfm import load_bfm
    from tddfa_tools.export_onnx import (
        export_detector_graph,
        export_face_detector,
        export_face_regressor,
    )
    from tddfa_tools.render_assets import build_render_assets, render_asset_paths

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


def configure(configs: dict, options: BuildOptions, models: BuiltModels) -> None:
    """Rewrite the template configs in place for ``options``."""
    write_graph(configs, options.pipeline.max_faces)  # tensors and wiring: tddfa.graph
    pipeline_values = options.pipeline.to_parameters()
    gpu = options.device == "gpu"
    counts = dict(options.instance_counts)
    bfm_kind = "exact" if models.bfm_exact else "approximate"
    for name, config in configs.items():
        config.max_batch_size = options.max_batch_size
        if name in ENSEMBLES:
            continue
        for key in config.parameters:
            if key in pipeline_values:
                config.parameters[key].string_value = pipeline_values[key]
        _instance_groups(config, counts.get(name, options.instances), options)
        if gpu and config.backend == "python":  # device tensors (DLPack), never host copies
            config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
        if "regressor" in config.parameters:
            config.parameters["regressor"].string_value = models.regressor_name
        if name in BFM_MODELS:
            config.parameters["bfm"].string_value = bfm_kind


def _instance_groups(config, count: int, options: BuildOptions) -> None:
    """``count`` instances on the CPU, on the default GPU, or on each of ``options.gpus``."""
    del config.instance_group[:]
    if options.device != "gpu":
        config.instance_group.add(count=count, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
        return
    group = config.instance_group.add(
        count=count, kind=model_config_pb2.ModelInstanceGroup.KIND_GPU
    )
    group.gpus.extend(options.gpus)  # empty: every visible GPU gets `count` instances


def _template_ignore(folder: str, names: list[str]) -> set[str]:
    """copytree's filter: caches, and top-level folders that are not models."""
    ignored = {name for name in names if name == "__pycache__"}
    if Path(folder) == TEMPLATE:
        ignored |= {
            n
            for n in names
            if (TEMPLATE / n).is_dir() and not (TEMPLATE / n / "config.pbtxt").is_file()
        }
    return ignored


def build_repository(options: BuildOptions) -> Path:
    """Build the repository into ``options.out`` (replaced only when the build succeeded)."""
    layout = layout_for(options.flavour, options.networks)
    models = export_models(options)
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        repo = staging / "repo"
        # model folders only (a config.pbtxt): a stray folder would fail Triton's start-up
        shutil.copytree(TEMPLATE, repo, ignore=_template_ignore)
        for ensemble in ENSEMBLES:  # ensembles need an (empty) version folder
            (repo / ensemble / "1").mkdir(exist_ok=True)
        configs = load_repository(repo)
        configure_networks(configs, layout, gpu=options.device == "gpu", fp16=options.fp16)
        configure(configs, options, models)
        problems = [p for ensemble in ENSEMBLES for p in check_ensemble(configs, ensemble)]
        problems += graph_problems(configs, options.pipeline.max_faces) + check_bls(configs)
        problems += check_native_models(configs, layout, models)
        if problems:  # checked before the files are placed: engine builds take minutes
            raise RuntimeError("built repository is inconsistent:\n  " + "\n  ".join(problems))
        place_network_files(repo, layout, options, models)
        for model in BFM_MODELS:
            link(models.bfm, repo / model / "1" / "bfm.npz")
        link(models.render_assets, repo / "face_renderer" / "1" / "render_assets.npz")
        for name, config in configs.items():
            save_config(config, repo / name / "config.pbtxt")
        (repo / "BUILD.json").write_text(
            json.dumps(
                {
                    "flavour": options.flavour,
                    "networks": options.networks,
                    "device": options.device,
                    "max_batch_size": options.max_batch_size,
                    "fp16": options.fp16,
                    "gpus": list(options.gpus),
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
        "model repository written to %s (%s flavour, networks %s, %s)",
        out,
        options.flavour,
        options.networks,
        options.device,
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


def _gpus(text: str) -> tuple[int, ...]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not all(item.isdigit() for item in items) or len(set(items)) != len(items):
        raise ValueError(f"--gpus must be distinct device ids like 0,1; got {text!r}")
    return tuple(int(item) for item in items)


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
        help="how the two networks are served: python (tddfa.runners inside the Python steps, "
        "the embedded server), onnxruntime or tensorrt (Triton's native backends, called "
        "through BLS: the NGC container) (default: python)",
    )
    parser.add_argument(
        "--networks",
        choices=NETWORK_CHOICES,
        default=None,
        help="python flavour: run the networks inside the steps (in-process, the default) or "
        "as Python models the steps call through BLS (models: the native flavours' layout, "
        "testable on the embedded server)",
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
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help=f"frames per batched execution, 1..{MAX_BATCH_SIZE_LIMIT} (default: %(default)s)",
    )
    parser.add_argument(
        "--gpus",
        default="",
        help="GPU builds: comma-separated device ids that each get --instances instances of "
        "every step, e.g. 0,1 (default: every visible GPU)",
    )
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
        gpus=_gpus(args.gpus),
        networks=args.networks,
    )
    build_repository(options)
    return 0
