"""What every runner shares: the model files' names, the networks' tensor names, devices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MODEL_ONNX = "model.onnx"
MODEL_PLAN = "model.plan"
# (input names, output names) of the two networks, fixed at ONNX export
# (tools/build/export_onnx.py): the PyTorch rebuild and BLS calls to a served network use them.
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


def check_inputs(names: Sequence[str], inputs: Mapping[str, Any]) -> None:
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValueError(f"missing inputs {missing}; this network takes {list(names)}")


# ---------------------------------------------------------------------------- onnxruntime
