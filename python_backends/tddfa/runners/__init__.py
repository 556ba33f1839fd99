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

Modules: :mod:`.io` (file and tensor names, devices), :mod:`.onnx_runtime`,
:mod:`.torch_cuda` (with :mod:`.fusion`, conv-bn folding), :mod:`.tensorrt_runner`, and
:mod:`.choice` (what the machine offers, :func:`make_runner`).
"""

from tddfa.runners.choice import (
    TorchGraph,
    make_runner,
    onnx_io_names,
    tensorrt_available,
    torch_module_for,
)
from tddfa.runners.fusion import fuse_conv_bn
from tddfa.runners.io import MODEL_ONNX, MODEL_PLAN, NETWORK_IO, parse_device
from tddfa.runners.onnx_runtime import OnnxRuntimeRunner
from tddfa.runners.tensorrt_runner import TensorRTRunner
from tddfa.runners.torch_cuda import TorchCudaRunner

__all__ = [
    "MODEL_ONNX",
    "MODEL_PLAN",
    "NETWORK_IO",
    "OnnxRuntimeRunner",
    "TensorRTRunner",
    "TorchCudaRunner",
    "TorchGraph",
    "fuse_conv_bn",
    "make_runner",
    "onnx_io_names",
    "parse_device",
    "tensorrt_available",
    "torch_module_for",
]
