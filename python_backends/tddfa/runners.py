"""Network runners for the ``python`` Triton flavour and the in-process pipeline.

Every runner has ``input_names``, ``output_names`` and ``run({name: array}) -> {name: array}``.
:func:`make_runner` picks the fastest one a model folder and the machine allow:

  TensorRT (``import tensorrt`` works, CUDA device, and ``model.plan`` present or an engine
  built from ``model.onnx`` + ``tensorrt_profiles.json`` by :mod:`tddfa.engine_cache`)
  > PyTorch CUDA (weights beside the ONNX file, torch with CUDA)
  > onnxruntime (``model.onnx``; CPU, or CUDA when onnxruntime-gpu is installed).

:func:`tddfa.face_slots.run_filled_slots` runs a per-face network (the regressor) on the
filled face slots only on the CPU, and on all K slots (static shapes) on the GPU.

Array types: :class:`OnnxRuntimeRunner` takes and returns numpy. The GPU runners accept
numpy, torch or any DLPack-capable CUDA array (CuPy, Triton's ``to_dlpack``) and return the
same kind as their first input (numpy in -> numpy out, CuPy in -> CuPy out, zero-copy through
DLPack), so the numpy/CuPy steps around them need no change. torch and tensorrt are imported
only when a GPU runner is built.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tddfa.xp import to_numpy

LOG = logging.getLogger(__name__)

MODEL_ONNX = "model.onnx"
MODEL_PLAN = "model.plan"
# Weight files that let make_runner rebuild the PyTorch module of a model folder.
FACEBOXES_WEIGHTS = "FaceBoxesProd.pth"
REGRESSOR_WEIGHTS = ("mb1_120x120.pth", "mb05_120x120.pth")
# (input names, output names) of the two networks, fixed at ONNX export
# (tools/export_onnx.py): the PyTorch rebuild and BLS calls to a served network use them.
NETWORK_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "face_detector": (("DETECTOR_INPUT",), ("LOC", "CONF")),  # the bare FaceBoxes
    "face_regressor": (("CROPS",), ("PARAMS_NORM",)),
}


def parse_device(device: str) -> tuple[str, int]:
    """Parse a device: "cpu" -> ("cpu", 0); "cuda" | "cuda:N" | "gpu:N" -> ("cuda", N)."""
    kind, _, index = device.strip().lower().partition(":")
    if kind == "cpu" and not index:
        return "cpu", 0
    if kind in ("cuda", "gpu") and (not index or index.isdigit()):
        return "cuda", int(index or 0)
    raise ValueError(f"device must be 'cpu' or 'cuda:N', got {device!r}")


def _check_inputs(names: Sequence[str], inputs: Mapping[str, Any]) -> None:
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValueError(f"missing inputs {missing}; this network takes {list(names)}")


# ---------------------------------------------------------------------------- onnxruntime


# onnxruntime's input type names -> what the feed is cast to (float32 for anything else)
_ORT_FEED_DTYPES = {"tensor(uint8)": np.uint8, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


class OnnxRuntimeRunner:
    """An onnxruntime session: numpy in, numpy out.

    ``device`` "cpu" or "cuda:N" (needs onnxruntime-gpu); ``threads`` caps intra-op threads
    (None: onnxruntime's default, all cores).
    """

    def __init__(
        self, onnx_path: str | os.PathLike, device: str = "cpu", threads: int | None = None
    ):
        import onnxruntime as ort

        kind, index = parse_device(device)
        available = ort.get_available_providers()
        if kind == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise RuntimeError(
                    f"onnxruntime has no CUDAExecutionProvider (available: {available}); "
                    "install onnxruntime-gpu or run on device 'cpu'"
                )
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        # ORT's CPU arena never shrinks: each new largest batch (four full frames re-detected
        # at once) grows it for good. Under jemalloc (tddfa_tools.allocator) plain malloc is as
        # fast: 259 vs 263 ms for 7 aligner + 4 detector batches, peak RSS 264 vs 369 MB.
        options.enable_cpu_mem_arena = False
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.path = Path(onnx_path)
        self.device = device
        self.session = ort.InferenceSession(os.fspath(onnx_path), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._feed_dtypes = {
            i.name: _ORT_FEED_DTYPES.get(i.type, np.float32) for i in self.session.get_inputs()
        }

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """{input name: array} -> {output name: numpy array of the graph's output type}.

        Inputs are cast to the graph's input types (float32 for the two networks; uint8 frames
        for the whole detector graph). They may be numpy or CuPy (copied to the host: a
        fallback, not a GPU path)."""
        _check_inputs(self.input_names, inputs)
        feed = {
            n: np.ascontiguousarray(to_numpy(inputs[n]), dtype=self._feed_dtypes[n])
            for n in self.input_names
        }
        outputs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outputs, strict=True))


# ---------------------------------------------------------------------------- torch helpers


def _to_torch(x: Any, device):
    """numpy / torch / DLPack-capable array -> torch tensor on ``device`` (zero-copy if there)."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x).to(device)
    return torch.as_tensor(np.asarray(x), device=device)


def _like(tensor, template: Any) -> Any:
    """Return ``tensor`` as the kind of array ``template`` is (numpy, torch or via DLPack)."""
    import torch

    if isinstance(template, torch.Tensor):
        return tensor
    if isinstance(template, np.ndarray):
        return tensor.cpu().numpy()
    module = type(template).__module__.split(".")[0]
    if module == "cupy":
        import cupy

        return cupy.from_dlpack(tensor)
    return tensor


# ---------------------------------------------------------------------------- PyTorch CUDA


def fuse_conv_bn(module):
    """Fold every eval-mode BatchNorm into the convolution before it, in place; returns module.

    Pairs are siblings named ``conv*`` / ``bn*`` (conv/bn, conv1/bn1, conv_dw/bn_dw, ...), the
    layout of both networks. Needed for float16: unfused, FaceBoxes' first BatchNorm loses
    the detector's precision (LOC relative error 0.49 instead of 1e-3).
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            bn = getattr(parent, name.replace("conv", "bn", 1), None) if "conv" in name else None
            if isinstance(child, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, name, fuse_conv_bn_eval(child, bn))
                setattr(parent, name.replace("conv", "bn", 1), nn.Identity())
    return module


class TorchCudaRunner:
    """Runs the PyTorch module an ONNX graph was exported from, on CUDA.

    ``module`` takes the inputs positionally in ``input_names`` order and returns a tensor or
    a tuple in ``output_names`` order. ``fp16`` runs the weights and inputs in half precision
    (outputs are returned as float32). ``cuda_graphs`` captures one CUDA graph per input shape seen (up to
    ``max_graphs``) and replays it; other shapes run eagerly.
    """

    def __init__(
        self,
        module,
        input_names: Sequence[str],
        output_names: Sequence[str],
        device: str = "cuda:0",
        fp16: bool = True,
        cuda_graphs: bool = False,
        max_graphs: int = 8,
    ):
        import torch

        kind, index = parse_device(device)
        if kind != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"TorchCudaRunner needs a CUDA device, got {device!r}")
        self.device = torch.device("cuda", index)
        self.dtype = torch.float16 if fp16 else torch.float32
        self.module = fuse_conv_bn(module.eval()).to(self.device, self.dtype)
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.cuda_graphs = cuda_graphs
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, tuple] = {}

    def _forward(self, tensors):
        import torch

        # fp32 means fp32: no TF32 convolutions (they cost ~1e-3 relative error)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            out = self.module(*tensors)
        return out if isinstance(out, tuple | list) else (out,)

    def _capture(self, tensors):
        import torch

        static_in = [t.clone() for t in tensors]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up (cuDNN autotuning, lazy init) outside the graph
                self._forward(static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads of the process (CuPy steps, other runners) may
        # synchronise while this one captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = self._forward(static_in)
        return graph, static_in, static_out

    def warmup(self, dims: Mapping[str, Sequence[int]], batch_sizes: Sequence[int]) -> None:
        """Run every batch size once on zeros (``dims``: per input, without the batch axis),
        so cuDNN's choices and the CUDA graphs are made at load time, not under traffic."""
        import torch

        for batch in batch_sizes:
            self.run(
                {
                    name: torch.zeros((batch, *dims[name]), device=self.device)
                    for name in self.input_names
                }
            )
        torch.cuda.synchronize(self.device)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """{input name: array} -> {output name: float32 array of the first input's kind}."""
        import torch

        _check_inputs(self.input_names, inputs)
        template = inputs[self.input_names[0]]
        tensors = [_to_torch(inputs[n], self.device).to(self.dtype) for n in self.input_names]
        with torch.inference_mode():
            key = tuple(tuple(t.shape) for t in tensors)
            if self.cuda_graphs and (key in self._graphs or len(self._graphs) < self.max_graphs):
                if key not in self._graphs:
                    self._graphs[key] = self._capture(tensors)
                graph, static_in, static_out = self._graphs[key]
                for dst, src in zip(static_in, tensors, strict=True):
                    dst.copy_(src)
                graph.replay()
                # the static outputs are overwritten by the next replay: copy them out
                # (the float16 -> float32 cast is that copy)
                outputs = [o.float() if o.dtype != torch.float32 else o.clone() for o in static_out]
            else:
                outputs = [o.float() for o in self._forward(tensors)]
        return {
            name: _like(out, template) for name, out in zip(self.output_names, outputs, strict=True)
        }


# ---------------------------------------------------------------------------- TensorRT


class TensorRTRunner:
    """Deserialises a TensorRT ``.plan`` and runs it on torch CUDA tensors (TensorRT >= 10 API).

    Input shapes are set per call (dynamic shapes within the engine's optimisation profile).
    Runs on the current torch CUDA stream of ``device``, so no extra synchronisation is
    needed before further torch/DLPack work; numpy outputs are copied back synchronously.
    """

    def __init__(self, plan_path: str | os.PathLike, device: str = "cuda:0"):
        import tensorrt as trt
        import torch

        kind, index = parse_device(device)
        if kind != "cuda":
            raise RuntimeError(f"TensorRT needs a CUDA device, got {device!r}")
        self.device = torch.device("cuda", index)
        self.path = Path(plan_path)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(self._logger)
            self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise RuntimeError(
                    f"{self.path}: TensorRT could not deserialise the engine; it was built by "
                    "another TensorRT version or for another GPU: rebuild it with "
                    "`tddfa build --flavour tensorrt` on this machine"
                )
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}

    def _torch_dtype(self, trt_dtype):
        import torch

        trt = self._trt
        table = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.int32: torch.int32,
            trt.int8: torch.int8,
            trt.bool: torch.bool,
        }
        if trt_dtype not in table:
            raise RuntimeError(f"{self.path}: unsupported TensorRT I/O dtype {trt_dtype}")
        return table[trt_dtype]

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """{input name: array} -> {output name: array of the first input's kind}."""
        import torch

        _check_inputs(self.input_names, inputs)
        template = inputs[self.input_names[0]]
        keep = []  # tensors must outlive the asynchronous execution
        for name in self.input_names:
            t = _to_torch(inputs[name], self.device).to(self._dtypes[name]).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise ValueError(
                    f"{name} shape {tuple(t.shape)} is outside the engine's optimisation "
                    f"profile ({self.path}); rebuild the engine with a wider profile"
                )
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            outputs[name] = out
            self.context.set_tensor_address(name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed (see the server log)")
        return {
            n: _like(o.float() if o.is_floating_point() else o, template)
            for n, o in outputs.items()
        }


# ---------------------------------------------------------------------------- selection


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
