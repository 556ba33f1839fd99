"""Arrays in and out of the torch-based runners: any kind in, the first input's kind out."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_torch(x: Any, device):
    """numpy / torch / DLPack-capable array -> torch tensor on ``device`` (zero-copy if there)."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x).to(device)
    return torch.as_tensor(np.asarray(x), device=device)


def like(tensor, template: Any) -> Any:
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
