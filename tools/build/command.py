"""``tddfa build``: the command line of the repository builder."""

from __future__ import annotations

from pathlib import Path

from tddfa.config import PipelineConfig
from tddfa_tools.build.flavours import NETWORK_CHOICES
from tddfa_tools.build.options import FLAVOURS, MAX_BATCH_SIZE_LIMIT, BuildOptions
from tddfa_tools.build.repository import TEMPLATE_MODELS, build_repository
from tddfa_tools.locations import default_models_dir, default_repository


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
        "through BLS: the NGC container) (default: %(default)s)",
    )
    parser.add_argument(
        "--networks",
        choices=NETWORK_CHOICES,
        default=None,
        help="python flavour: run the networks inside the steps (in-process) or as Python "
        "models the steps call through BLS (models: the native flavours' layout, testable on "
        "the embedded server) (default: in-process for python, models for the others)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="where every step runs: cpu (Mesa llvmpipe, onnxruntime) or gpu (CUDA, NVIDIA EGL, "
        "device tensors between steps) (default: %(default)s)",
    )
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
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        metavar="N",
        help="instances (processes) of every step (default: %(default)s)",
    )
    parser.add_argument(
        "--instance-count",
        action="append",
        default=[],
        metavar="MODEL=N",
        help="instances of one step, overriding --instances (repeatable), "
        "e.g. --instance-count face_renderer=4 (default: --instances for every step)",
    )
    parser.add_argument(
        "--regressor",
        choices=("auto", "mb05", "mb1"),
        default="auto",
        help="the 3DMM regressor: auto picks mb1 if its weights are present, else mb05 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--fp32",
        action="store_true",
        help="GPU networks in fp32: TensorRT engines and the PyTorch CUDA runner (default fp16)",
    )
    parser.add_argument(
        "--assets",
        type=Path,
        default=None,
        metavar="DIR",
        help="asset folder (default: $TDDFA_ASSET_DIR, then the user cache)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=default_repository(),
        metavar="DIR",
        help="the model repository to write (replaced only when the build succeeded; "
        "default: %(default)s, where `tddfa serve` looks)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=default_models_dir(),
        metavar="DIR",
        help="cache of exported ONNX files and BFM tables (default: %(default)s)",
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
