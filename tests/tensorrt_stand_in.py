"""A stand-in of the ``tensorrt`` module: the slice of its API that
tddfa_tools.build.tensorrt_builder.build_engine uses, recording what it was asked. Put it in
``sys.modules["tensorrt"]`` (monkeypatch.setitem) to run the engine builder without TensorRT
or a GPU: the "engine" it writes is the bytes ``b"PLAN"``."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class FakeInput:
    name: str
    shape: tuple[int, ...]


@dataclasses.dataclass
class FakeNetwork:
    inputs: list[FakeInput]

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> FakeInput:
        return self.inputs[i]


class FakeTensorRT:
    """The slice of the tensorrt API that build_engine uses; records what it was asked."""

    __version__ = "10.0.0"

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class NetworkDefinitionCreationFlag:
        EXPLICIT_BATCH = 0

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class BuilderFlag:
        FP16 = "fp16"

    def __init__(self, parse_errors: list[str] | None = None) -> None:
        self.parse_errors = parse_errors or []
        self.calls: dict[str, object] = {"flags": set(), "profiles": []}
        fake = self

        class Builder:
            def __init__(self, logger: object) -> None:
                pass

            def create_network(self, flags: int) -> FakeNetwork:
                fake.calls["network_flags"] = flags
                fake.network = FakeNetwork([])
                return fake.network

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> dict[str, tuple]:
                profile: dict[str, tuple] = {}
                fake.calls["profiles"].append(profile)
                return _Profile(profile)

            def build_serialized_network(self, network: object, config: object) -> bytes:
                return b"PLAN"

        class _Profile:
            def __init__(self, store: dict) -> None:
                self.store = store

            def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
                self.store[name] = (lo, opt, hi)

        class Cache:
            def __init__(self, data: bytes) -> None:
                fake.calls["cache_in"] = data

            def serialize(self) -> bytes:
                return b"CACHE"

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.calls["workspace"] = size

            def set_flag(self, flag: str) -> None:
                fake.calls["flags"].add(flag)

            def add_optimization_profile(self, profile: object) -> None:
                pass

            def create_timing_cache(self, data: bytes) -> Cache:
                return Cache(data)

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
                self.cache = cache

            def get_timing_cache(self) -> Cache:
                return self.cache

        class OnnxParser:
            def __init__(self, network: FakeNetwork, logger: object) -> None:
                self.network = network
                self.num_errors = len(fake.parse_errors)

            def parse_from_file(self, path: str) -> bool:
                import onnx

                graph = onnx.load(path, load_external_data=False).graph
                for value in graph.input:
                    dims = tuple(d.dim_value or -1 for d in value.type.tensor_type.shape.dim)
                    self.network.inputs.append(FakeInput(value.name, dims))
                return not fake.parse_errors

            def get_error(self, i: int) -> str:
                return fake.parse_errors[i]

        self.Builder, self.OnnxParser = Builder, OnnxParser
