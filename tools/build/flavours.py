"""Where the two networks run in each flavour of `tddfa build`, and the files that serve them.

| flavour (``--networks``) | face_detector | face_regressor | face_aligner, face_tracker |
|---|---|---|---|
| python (in-process, default) | Python model: ``tddfa.detector`` over ``1/face_detector/`` | not served | run the networks in-process from ``1/<network>/`` |
| python (models) | the same Python model | Python model: ``tddfa.runners`` over ``1/model.onnx`` | BLS: both call face_regressor, face_tracker also face_detector |
| onnxruntime | ``onnxruntime_onnx``: the one-graph detector (``tools/build/detector_graph.py``) | ``onnxruntime_onnx`` | BLS, as above |
| tensorrt | ``tensorrt_plan``: that graph's engine | ``tensorrt_plan`` | BLS, as above |

face_renderer and face_vertices are Python models in every flavour. A step calls a served
model when its config has the parameter ``<network>_model`` (tddfa.contract.bls_parameter);
tddfa_tools.build.model_config.check_bls checks those calls like check_ensemble checks the wiring.
Python-flavour network folders get ``tensorrt_profiles.json`` so the runner can build a
TensorRT engine where ``tensorrt`` imports (tddfa.engine_cache); the tensorrt flavour builds
its engines here, with the TensorRT of the build machine (which must be the server's).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from tddfa.contract import bls_parameter

NETWORK_CHOICES = ("in-process", "models")
NATIVE_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
NETWORK_MODELS = ("face_detector", "face_regressor")  # the networks as models of their own
# The networks each Python step needs, in-process or through BLS.
STEP_NETWORKS = {
    "face_aligner": ("face_regressor",),
    "face_tracker": ("face_detector", "face_regressor"),
}


@dataclasses.dataclass(frozen=True)
class Layout:
    """Who runs which network in one build."""

    flavour: str
    native: tuple[str, ...]  # network models served by a native backend (no model.py)
    python_networks: tuple[str, ...]  # network models served as Python models (NetworkModel)
    in_process: dict[str, tuple[str, ...]]  # Python model -> networks in <version>/<network>/
    bls: dict[str, dict[str, str]]  # Python model -> {network: the served model it calls}
    dropped: tuple[str, ...]  # template models this build does not serve

    @property
    def platform(self) -> str | None:
        return NATIVE_PLATFORMS.get(self.flavour)


def layout_for(flavour: str, networks: str) -> Layout:
    """The layout of ``flavour`` (python | onnxruntime | tensorrt) with ``networks``
    (in-process | models; the native flavours serve them as models only)."""
    if networks not in NETWORK_CHOICES:
        raise ValueError(f"--networks must be one of {NETWORK_CHOICES}, got {networks!r}")
    if flavour not in ("python", *NATIVE_PLATFORMS):
        raise ValueError(f"unknown flavour {flavour!r}")
    if flavour != "python" and networks != "models":
        raise ValueError(
            f"--networks {networks} is the python flavour's choice; --flavour {flavour} serves "
            "the networks natively as models of their own (leave --networks out)"
        )
    calls = {step: {network: network for network in nets} for step, nets in STEP_NETWORKS.items()}
    if flavour == "python" and networks == "in-process":
        return Layout(
            flavour,
            native=(),
            python_networks=(),
            in_process={"face_detector": ("face_detector",), **STEP_NETWORKS},
            bls={},
            dropped=("face_regressor",),
        )
    if flavour == "python":  # the detector stays the Python detector step, over its network
        return Layout(
            flavour,
            native=(),
            python_networks=("face_regressor",),
            in_process={"face_detector": ("face_detector",)},
            bls=calls,
            dropped=(),
        )
    return Layout(flavour, NETWORK_MODELS, (), {}, calls, ())


def precision(network: str, fp16: bool) -> str:
    """A network's precision on the GPU (PyTorch CUDA runner, TensorRT engines).

    The detector stays fp32: its float16 scores reorder near-tied candidates before NMS
    (emma.jpg's largest face: another box wins, 9 px off, landmarks 5.8 px off the
    reference), and it is not the GPU's bottleneck.
    """
    return "fp16" if fp16 and network == "face_regressor" else "fp32"


def configure_networks(configs: dict, layout: Layout, *, gpu: bool, fp16: bool) -> None:
    """Rewrite the template ``configs`` in place for ``layout``: drop the models it does not
    serve, make the native ones native, name the served models the steps call, and (GPU)
    give every Python-run network its precision."""
    for name in layout.dropped:
        configs.pop(name, None)
    for name in layout.native:
        config = configs[name]
        config.ClearField("backend")
        config.platform = layout.platform
        for key in [k for k in config.parameters if k not in _GRAPH_PARAMETERS]:
            del config.parameters[key]  # the Python steps' settings mean nothing here
    for step, calls in layout.bls.items():
        for network, served in calls.items():
            configs[step].parameters[bls_parameter(network)].string_value = served
    if gpu:
        python_run = [
            (step, network) for step, nets in layout.in_process.items() for network in nets
        ]
        python_run += [(name, name) for name in layout.python_networks]
        for model, network in python_run:
            configs[model].parameters[f"{network}_precision"].string_value = precision(
                network, fp16
            )


# What the one-graph detector bakes in (tddfa.config.PipelineConfig fields): kept in its
# native config so that a reader sees what the graph was built for.
_GRAPH_PARAMETERS = (
    "max_faces",
    "canvas_height",
    "canvas_width",
    "max_image_height",
    "max_image_width",
    "pre_nms_threshold",
    "nms_iou_threshold",
    "score_threshold",
)


def check_native_models(configs: dict, layout: Layout, models: Any) -> list[str]:
    """Problems between each natively served model's config and the ONNX graph it is served
    from (names, dtypes, ranks, fixed dims); an empty list when they agree. Triton would
    refuse such a model at load time, in a container; this finds it at build time."""
    problems = []
    for name in layout.native:
        onnx = models.detector_graph if name == "face_detector" else models.networks[name]
        problems += [f"{name}: {p}" for p in graph_io_problems(configs[name], onnx)]
    return problems


_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
}


def graph_io_problems(config: Any, onnx_path: Path) -> list[str]:
    """What ``config`` (a ModelConfig with a batch axis) declares that the ONNX graph at
    ``onnx_path`` does not have: every input and output with its dtype, rank and fixed dims."""
    import onnx
    from tritonclient.grpc import model_config_pb2

    graph = onnx.load(os.fspath(onnx_path), load_external_data=False).graph
    initialisers = {i.name for i in graph.initializer}
    found = {v.name: v for v in (*graph.input, *graph.output) if v.name not in initialisers}
    problems = []
    for tensor in (*config.input, *config.output):
        value = found.get(tensor.name)
        if value is None:
            problems.append(f"{tensor.name} is not an input or output of {onnx_path.name}")
            continue
        kind = value.type.tensor_type
        dtype = _ONNX_TO_TRITON.get(kind.elem_type, f"ONNX type {kind.elem_type}")
        declared = model_config_pb2.DataType.Name(tensor.data_type)
        if dtype != declared:
            problems.append(
                f"{tensor.name} is {dtype} in {onnx_path.name}, {declared} in the config"
            )
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
        wanted = ([-1] if config.max_batch_size > 0 else []) + list(tensor.dims)
        if len(dims) != len(wanted) or any(
            a != b and -1 not in (a, b) for a, b in zip(dims, wanted, strict=False)
        ):
            problems.append(
                f"{tensor.name} has dims {dims} in {onnx_path.name}, {wanted} in the config"
            )
    return problems


def place_network_files(repo: Path, layout: Layout, options: Any, models: Any) -> None:
    """Write what serves each network into the staged repository ``repo``.

    ``options``: tddfa_tools.build.options.BuildOptions; ``models``: its BuiltModels (the
    exported ONNX files and the weights the PyTorch CUDA runner rebuilds them from).
    """
    for name in layout.dropped:
        shutil.rmtree(repo / name)
    for step, networks in layout.in_process.items():
        for network in networks:
            _python_network(network, repo / step / "1" / network, options, models)
    for name in layout.python_networks:
        _python_network(name, repo / name / "1", options, models)
    for name in layout.native:
        version = repo / name / "1"
        (version / "model.py").unlink()
        onnx = models.detector_graph if name == "face_detector" else models.networks[name]
        if layout.flavour == "onnxruntime":
            link(onnx, version / "model.onnx")
        else:
            engine = _engine(name, onnx, options)
            link(engine, version / "model.plan")
            link(engine.with_suffix(".json"), version / "model.plan.json")  # TensorRT, GPU


def _python_network(network: str, folder: Path, options: Any, models: Any) -> None:
    """What tddfa.runners needs to run ``network`` from ``folder``: model.onnx, the engine
    profile for the TensorRT runner, and on GPU builds the PyTorch weights."""
    from tddfa.engine_cache import write_profiles
    from tddfa_tools.build.tensorrt_builder import default_profiles

    folder.mkdir(parents=True, exist_ok=True)
    link(models.networks[network], folder / "model.onnx")
    profiles = default_profiles(options.pipeline, options.max_batch_size, detector="network")
    write_profiles(folder, profiles[network])
    if options.device == "gpu":  # without TensorRT, the runner rebuilds it in PyTorch
        weights = models.torch_weights[network]
        link(weights, folder / weights.name)


def _engine(name: str, onnx: Path, options: Any) -> Path:
    """The TensorRT engine of ``onnx`` for this machine's GPU, built once and cached in
    ``<models_dir>/engines`` (keyed by the ONNX file, profile, precision, GPU and TensorRT)."""
    from tddfa.engine_cache import cached_engine
    from tddfa_tools.build.tensorrt_builder import default_profiles

    profile = default_profiles(options.pipeline, options.max_batch_size)[name]
    return cached_engine(
        onnx,
        profile,
        fp16=precision(name, options.fp16) == "fp16",
        device=options.gpus[0] if options.gpus else 0,
        cache_dir=Path(options.models_dir) / "engines",
    )


def link(source: Path, target: Path) -> None:
    """Hard-link a built file into the repository (copy across file systems)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
