"""FaceBoxes face detector (the ``FaceBoxesProd.pth`` weights of 3DDFA_V2), docs/models.md 1.

:class:`FaceBoxes` is the bare network: BGR, mean-subtracted input. :class:`FaceDetectorGraph`
is what gets exported as the ``face_detector`` model: RGB 0..255 input, the channel flip and
mean subtraction inside the graph. Both are fully convolutional (any H and W).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from tddfa.config import DETECTOR_MEAN_BGR

# anchors per cell of each detection source (stride 32, 64, 128): 4x4 + 2x2 + 1, then 1, 1
ANCHORS_PER_SOURCE = (21, 1, 1)
NUM_CLASSES = 2  # background, face


class _ConvBN(nn.Module):
    """Conv without bias followed by BatchNorm (eps 1e-5); state-dict names ``conv``, ``bn``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)


class BasicConv(_ConvBN):
    """conv, BN, ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class CReLU(_ConvBN):
    """conv, BN, then ReLU of (x, -x) concatenated on channels: 2 * cout channels out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(torch.cat((x, -x), dim=1))


class Inception(nn.Module):
    """128 -> 128 channels: four 32-channel branches concatenated (docs/models.md 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch1x1 = BasicConv(128, 32, 1)
        self.branch1x1_2 = BasicConv(128, 32, 1)
        self.branch3x3_reduce = BasicConv(128, 24, 1)
        self.branch3x3 = BasicConv(24, 32, 3, padding=1)
        self.branch3x3_reduce_2 = BasicConv(128, 24, 1)
        self.branch3x3_2 = BasicConv(24, 32, 3, padding=1)
        self.branch3x3_3 = BasicConv(32, 32, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch1x1_2(F.avg_pool2d(x, 3, stride=1, padding=1))
        c = self.branch3x3(self.branch3x3_reduce(x))
        d = self.branch3x3_3(self.branch3x3_2(self.branch3x3_reduce_2(x)))
        return torch.cat((a, b, c, d), dim=1)


class FaceBoxes(nn.Module):
    """The FaceBoxes network.

    forward(x (N, 3, H, W) float32 BGR minus the mean) ->
        loc (N, P, 4) box offsets, conf (N, P, 2) softmax probabilities (face = class 1),
    with P the number of priors of an H x W input (see ``tddfa.priors``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = CReLU(3, 24, 7, stride=4, padding=3)
        self.conv2 = CReLU(48, 64, 5, stride=2, padding=2)
        self.inception1 = Inception()
        self.inception2 = Inception()
        self.inception3 = Inception()
        self.conv3_1 = BasicConv(128, 128, 1)
        self.conv3_2 = BasicConv(128, 256, 3, stride=2, padding=1)
        self.conv4_1 = BasicConv(256, 128, 1)
        self.conv4_2 = BasicConv(128, 256, 3, stride=2, padding=1)
        source_channels = (128, 256, 256)
        self.loc = nn.ModuleList(
            nn.Conv2d(c, a * 4, 3, padding=1)
            for c, a in zip(source_channels, ANCHORS_PER_SOURCE, strict=True)
        )
        self.conf = nn.ModuleList(
            nn.Conv2d(c, a * NUM_CLASSES, 3, padding=1)
            for c, a in zip(source_channels, ANCHORS_PER_SOURCE, strict=True)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.conv1(x), 3, stride=2, padding=1)
        x = F.max_pool2d(self.conv2(x), 3, stride=2, padding=1)
        s1 = self.inception3(self.inception2(self.inception1(x)))
        s2 = self.conv3_2(self.conv3_1(s1))
        s3 = self.conv4_2(self.conv4_1(s2))
        n = x.shape[0]
        locs, confs = [], []
        for source, loc_head, conf_head in zip((s1, s2, s3), self.loc, self.conf, strict=True):
            # NCHW -> NHWC -> (N, cells * anchors, 4 or 2): the prior order of docs/models.md 1
            locs.append(loc_head(source).permute(0, 2, 3, 1).reshape(n, -1, 4))
            confs.append(conf_head(source).permute(0, 2, 3, 1).reshape(n, -1, NUM_CLASSES))
        loc = torch.cat(locs, dim=1)
        conf = torch.softmax(torch.cat(confs, dim=1), dim=-1)
        return loc, conf


class FaceDetectorGraph(nn.Module):
    """The exported ``face_detector``: DETECTOR_INPUT -> (LOC, CONF).

    forward(x (N, 3, H, W) float32 RGB 0..255) -> loc (N, P, 4), conf (N, P, 2) softmaxed.
    The RGB -> BGR flip and the mean subtraction happen here, so a canvas padded with the
    RGB mean normalises to exactly 0 in its padding.
    """

    def __init__(self, net: FaceBoxes):
        super().__init__()
        self.net = net
        mean_bgr = torch.tensor(DETECTOR_MEAN_BGR, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.register_buffer("mean_bgr", mean_bgr, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x.flip(1) - self.mean_bgr)


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_faceboxes(path: str | os.PathLike) -> FaceBoxes:
    """Load ``FaceBoxesProd.pth`` (a plain state dict) strictly into :class:`FaceBoxes` (eval).

    Raises RuntimeError naming missing/unexpected keys if the file is not a FaceBoxes checkpoint.
    """
    state = torch.load(os.fspath(path), weights_only=True, map_location="cpu")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    net = FaceBoxes()
    net.load_state_dict(_strip_prefix(state), strict=True)
    return net.eval()
