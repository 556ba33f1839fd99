"""What ``tddfa build`` builds: a flavour, a device, K and a canvas, instances, and where to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tddfa.config import PipelineConfig
from tddfa_tools.build.flavours import layout_for
from tddfa_tools.locations import default_models_dir, default_repository

FLAVOURS = ("python", "onnxruntime", "tensorrt")
MAX_BATCH_SIZE_LIMIT = 32


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    flavour: str = "python"
    device: str = "cpu"  # cpu | gpu
    pipeline: PipelineConfig = PipelineConfig()
    max_batch_size: int = 8
    out: Path = dataclasses.field(default_factory=default_repository)
    models_dir: Path = dataclasses.field(default_factory=default_models_dir)
    asset_dir: Path | None = None
    regressor: str = "auto"  # auto | mb05 | mb1
    fp16: bool = True  # network precision on GPU (TensorRT engines, PyTorch CUDA runner)
    instances: int = 1  # instances of each step (GPU builds may want more)
    instance_counts: tuple[tuple[str, int], ...] = ()  # per-model overrides of `instances`
    gpus: tuple[int, ...] = ()  # GPU builds: the devices every step gets instances on
    # python flavour: the networks run inside the steps ("in-process") or as models of their
    # own that the steps call through BLS ("models"); None: the flavour's only/default choice
    networks: str | None = None

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {self.flavour!r}: choose one of {FLAVOURS}")
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device must be cpu or gpu, got {self.device!r}")
        if self.flavour == "tensorrt" and self.device != "gpu":
            raise ValueError("--flavour tensorrt needs --device gpu: TensorRT engines run on GPUs")
        if self.networks is None:
            default = "in-process" if self.flavour == "python" else "models"
            object.__setattr__(self, "networks", default)
        layout_for(self.flavour, self.networks)  # refuses a combination that does not exist
        if not 1 <= self.max_batch_size <= MAX_BATCH_SIZE_LIMIT:
            raise ValueError(
                f"--max-batch-size must be 1..{MAX_BATCH_SIZE_LIMIT}, got {self.max_batch_size}"
            )
        if self.pipeline.max_faces < 1:
            raise ValueError(f"--max-faces must be >= 1, got {self.pipeline.max_faces}")
        if self.instances < 1:
            raise ValueError(f"--instances must be >= 1, got {self.instances}")
        if self.gpus and self.device != "gpu":
            raise ValueError("--gpus needs --device gpu")
