"""Which runner a model folder and the machine allow: :func:`make_runner`."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tddfa.runners.io import MODEL_ONNX, MODEL_PLAN, NETWORK_IO, parse_device
from tddfa.runners.onnx_runtime import OnnxRuntimeRunner
from tddfa.runners.tensorrt_runner import TensorRTRunner
from tddfa.runners.torch_cuda import TorchCudaRunner

LOG = logging.getLogger(__name__)

# Weight files that let make_runner rebuild the PyTorch module of a model folder.
FACEBOXES_WEIGHTS = "FaceBoxesProd.pth"
REGRESSOR_WEIGHTS = ("mb1_120x120.pth", "mb05_120x120.pth")


def tensorrt_available() -> bool:
    """True when the TensorRT Python runtime can be imported."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # a broken install (missing libnvinfer) must not stop the server
        LOG.debug("tensorrt present but not importable: %s", exc)
        return False
    return True


def _torch_cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _onnxruntime_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@dataclasses.dataclass(frozen=True)
class TorchGraph:
    """A network rebuilt in PyTorch with the I/O names of its ONNX graph (NETWORK_IO)."""

    module: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


def torch_module_for(model_dir: Path) -> TorchGraph | None:
    """The PyTorch graph module rebuilt from the weights in ``model_dir``, or None.

    face_detector: FaceBoxesProd.pth; face_regressor: mb1/mb05_120x120.pth. No ONNX file is
    needed: the names are fixed at export.
    """
    if (model_dir / FACEBOXES_WEIGHTS).is_file():
        from tddfa.networks.faceboxes import FaceDetectorGraph, load_faceboxes

        module = FaceDetectorGraph(load_faceboxes(model_dir / FACEBOXES_WEIGHTS))
        return TorchGraph(module, *NETWORK_IO["face_detector"])
    for name in REGRESSOR_WEIGHTS:
        if (model_dir / name).is_file():
            from tddfa.networks.mobilenet_v1 import FaceRegressorGraph, load_mobilenet

            module = FaceRegressorGraph(load_mobilenet(model_dir / name))
            return TorchGraph(module, *NETWORK_IO["face_regressor"])
    return None


def onnx_io_names(onnx_path: Path) -> tuple[list[str], list[str]]:
    """(input names, output names) of an ONNX graph (initialisers excluded)."""
    import onnx

    graph = onnx.load(os.fspath(onnx_path), load_external_data=False).graph
    initialisers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initialisers], [
        o.name for o in graph.output
    ]


def make_runner(
    model_dir: str | os.PathLike,
    device: str = "cpu",
    *,
    threads: int | None = None,
    cuda_graphs: bool = False,
    fp16: bool = True,
    max_graphs: int = 8,
    torch_factory: Callable[[], Any] | None = None,
    tensorrt_profile: Mapping[str, Any] | None = None,
    engine_cache: str | os.PathLike | None = None,
):
    """The fastest runner for the model in ``model_dir`` (a Triton version folder) on ``device``.

    TensorRT (tensorrt importable + CUDA; ``model.plan``, or an engine built from
    ``model.onnx`` with ``tensorrt_profile`` / ``tensorrt_profiles.json`` and cached in
    ``engine_cache``, see :mod:`tddfa.engine_cache`) > PyTorch CUDA (weights in the folder,
    see :func:`torch_module_for`, or ``torch_factory``) > onnxruntime (``model.onnx``).
    ``fp16`` is the precision of the PyTorch runner and of a built engine.
    Logs which one was chosen. Raises FileNotFoundError when the folder has nothing runnable.
    """
    model_dir = Path(model_dir)
    kind, index = parse_device(device)
    plan, onnx_path = model_dir / MODEL_PLAN, model_dir / MODEL_ONNX
    if kind == "cuda":
        if tensorrt_available():
            from tddfa.engine_cache import engine_for

            engine = engine_for(model_dir, index, fp16, tensorrt_profile, engine_cache)
            if engine is not None:
                LOG.info("%s: TensorRT runner on %s (%s)", model_dir, device, engine.name)
                return TensorRTRunner(engine, device)
        if _torch_cuda_available():
            graph = torch_module_for(model_dir)
            if torch_factory is not None:
                if not onnx_path.is_file():
                    raise FileNotFoundError(f"{onnx_path} is needed for the graph's I/O names")
                inputs, outputs = onnx_io_names(onnx_path)
                graph = TorchGraph(torch_factory(), tuple(inputs), tuple(outputs))
            if graph is not None:
                LOG.info(
                    "%s: PyTorch CUDA runner on %s (%s%s)",
                    model_dir,
                    device,
                    "fp16" if fp16 else "fp32",
                    ", CUDA graphs" if cuda_graphs else "",
                )
                return TorchCudaRunner(
                    graph.module,
                    graph.input_names,
                    graph.output_names,
                    device,
                    fp16=fp16,
                    cuda_graphs=cuda_graphs,
                    max_graphs=max_graphs,
                )
    if not onnx_path.is_file():
        raise FileNotFoundError(
            f"{model_dir} has no {MODEL_ONNX}"
            + (f" (and {MODEL_PLAN} needs tensorrt and a CUDA device)" if plan.is_file() else "")
            + "; build the model repository with `tddfa build`"
        )
    if kind == "cuda" and not _onnxruntime_has_cuda():
        LOG.warning(
            "%s: no TensorRT, PyTorch CUDA or onnxruntime-gpu for %s; running on the CPU",
            model_dir,
            device,
        )
        device = "cpu"
    LOG.info("%s: onnxruntime runner on %s", model_dir, device)
    return OnnxRuntimeRunner(onnx_path, device, threads)
