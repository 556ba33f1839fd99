"""MobileNetV1 3DMM regressor (``mb05_120x120.pth`` / ``mb1_120x120.pth``), docs/models.md 2.

:class:`MobileNetV1` is the bare network: (B, 3, 120, 120) BGR, (x - 127.5) / 128 -> (B, 62).
:class:`FaceRegressorGraph` is what gets exported as the ``face_regressor`` model: crops
(N, K, 3, 120, 120) RGB 0..255 -> (N, K, 62), the flip and normalisation inside the graph.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from tddfa.config import NUM_PARAMS, REGRESSOR_SIZE

# (name, in channels, out channels, stride) at widen factor 1; docs/models.md 2
BLOCKS = (
    ("dw2_1", 32, 64, 1),
    ("dw2_2", 64, 128, 2),
    ("dw3_1", 128, 128, 1),
    ("dw3_2", 128, 256, 2),
    ("dw4_1", 256, 256, 1),
    ("dw4_2", 256, 512, 2),
    ("dw5_1", 512, 512, 1),
    ("dw5_2", 512, 512, 1),
    ("dw5_3", 512, 512, 1),
    ("dw5_4", 512, 512, 1),
    ("dw5_5", 512, 512, 1),
    ("dw5_6", 512, 1024, 2),
    ("dw6", 1024, 1024, 1),
)
NUM_LANDMARK_OUTPUTS = 136  # the checkpoints' unused 2D-landmark head (68 x 2)
PIXEL_MEAN = 127.5
PIXEL_SCALE = 128.0


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 (``conv_dw``, ``bn_dw``), ReLU, pointwise 1x1 (``conv_sep``, ``bn_sep``), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False)
        self.bn_dw = nn.BatchNorm2d(cin)
        self.conv_sep = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn_sep = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_dw(self.conv_dw(x)))
        return F.relu(self.bn_sep(self.conv_sep(x)))


class MobileNetV1(nn.Module):
    """MobileNetV1 with widen factor ``widen`` (channels int(c * widen)).

    forward(x (B, 3, 120, 120) float32 BGR, (pixel - 127.5) / 128) -> (B, 62) normalised params.
    ``landmark_head`` adds the checkpoints' ``fc_lm`` layer (136 outputs) so that they load
    strictly; it is never evaluated.
    """

    def __init__(self, widen: float = 1.0, landmark_head: bool = True):
        super().__init__()
        self.widen = widen
        width = int(32 * widen)
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        for name, cin, cout, stride in BLOCKS:
            self.add_module(name, DepthwiseSeparable(int(cin * widen), int(cout * widen), stride))
        features = int(1024 * widen)
        self.fc_param = nn.Linear(features, NUM_PARAMS)
        self.fc_lm = nn.Linear(features, NUM_LANDMARK_OUTPUTS) if landmark_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for name, *_ in BLOCKS:
            x = getattr(self, name)(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc_param(x)


class FaceRegressorGraph(nn.Module):
    """The exported ``face_regressor``: CROPS -> PARAMS_NORM.

    forward(crops (N, K, 3, 120, 120) float32 RGB 0..255) -> (N, K, 62) normalised params
    (de-normalisation with the mean/std pickle is ``tddfa.params.denormalize``).
    """

    def __init__(self, net: MobileNetV1):
        super().__init__()
        self.net = net

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        n, k = crops.shape[0], crops.shape[1]
        x = crops.reshape(-1, 3, REGRESSOR_SIZE, REGRESSOR_SIZE).flip(1)
        out = self.net((x - PIXEL_MEAN) / PIXEL_SCALE)
        return out.reshape(n, k, NUM_PARAMS)


def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the DataParallel ``module.`` prefix; map the older ``fc.*`` name to ``fc_param.*``."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("fc."):
            key = "fc_param." + key[len("fc.") :]
        out[key] = value
    return out


def load_mobilenet(path: str | os.PathLike) -> MobileNetV1:
    """Load an ``mb*_120x120.pth`` checkpoint strictly into :class:`MobileNetV1` (eval).

    The widen factor is read from the checkpoint (``conv1`` has int(32 * widen) filters), so
    mb05 and mb1 both load. Raises ValueError for a file that is not such a checkpoint.
    """
    checkpoint = torch.load(os.fspath(path), weights_only=True, map_location="cpu")
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: not a MobileNetV1 checkpoint (expected a dict of tensors)")
    state = _normalise_keys(state)
    if "conv1.weight" not in state or "fc_param.weight" not in state:
        raise ValueError(
            f"{path}: not a 3DDFA MobileNetV1 checkpoint (no conv1.weight / fc_param.weight); "
            "use mb05_120x120.pth or mb1_120x120.pth from cleardusk/3DDFA_V2"
        )
    widen = state["conv1.weight"].shape[0] / 32
    net = MobileNetV1(widen=widen, landmark_head="fc_lm.weight" in state)
    net.load_state_dict(state, strict=True)
    return net.eval()
