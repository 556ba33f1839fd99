"""The TensorRT runner: a deserialised ``.plan`` on torch CUDA tensors (TensorRT >= 10)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tddfa.runners.io import check_inputs, parse_device
from tddfa.runners.torch_arrays import like, to_torch


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

        check_inputs(self.input_names, inputs)
        template = inputs[self.input_names[0]]
        keep = []  # tensors must outlive the asynchronous execution
        for name in self.input_names:
            t = to_torch(inputs[name], self.device).to(self._dtypes[name]).contiguous()
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
            n: like(o.float() if o.is_floating_point() else o, template) for n, o in outputs.items()
        }
