"""The onnxruntime runner: numpy in, numpy out (CPU, or CUDA with onnxruntime-gpu)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tddfa.runners.io import check_inputs, parse_device
from tddfa.xp import to_numpy

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
        # at once) grows it for good. Under jemalloc (tddfa_tools.serve.allocator) plain malloc is as
        # fast: 259 vs 263 ms for 7 aligner + 4 detector batches, peak RSS 264 vs 369 MB.
        options.enable_cpu_mem_arena = False
        # ORT's intra-op threads spin between ops by default: on a few shared cores (the
        # tracker beside the renderer, the video encoder and the other steps) that burnt 2.5x
        # the CPU of the work itself (tracker: 20 vs 8 ms a frame, 2-core box under load).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        check_inputs(self.input_names, inputs)
        feed = {
            n: np.ascontiguousarray(to_numpy(inputs[n]), dtype=self._feed_dtypes[n])
            for n in self.input_names
        }
        outputs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outputs, strict=True))
