"""The PyTorch CUDA runner: the exported network's own module, float16 or float32, with
one CUDA graph per input shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tddfa.runners.fusion import fuse_conv_bn
from tddfa.runners.io import check_inputs, parse_device
from tddfa.runners.torch_arrays import like, to_torch


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

        check_inputs(self.input_names, inputs)
        template = inputs[self.input_names[0]]
        tensors = [to_torch(inputs[n], self.device).to(self.dtype) for n in self.input_names]
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
            name: like(out, template) for name, out in zip(self.output_names, outputs, strict=True)
        }
