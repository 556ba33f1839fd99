"""Base class of the repository's Python models: config in, tddfa step built once,
requests batched through :func:`tddfa.batching.run_batched`, one response per request."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

from tddfa.batching import run_batched
from tddfa.config import PipelineConfig
from tddfa_triton.diagnostics import install_stack_dump
from tddfa_triton.tensors import to_array, to_tensor


@dataclasses.dataclass(frozen=True)
class LoadContext:
    """What a step needs to build itself, read from Triton's ``initialize`` args."""

    model_name: str
    model_dir: Path  # the version folder: built weights and tables live here
    device: str  # "cpu" or "cuda:N"
    input_names: tuple[str, ...]
    parameters: dict[str, str]
    config: PipelineConfig
    input_dims: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # no batch
    max_batch_size: int = 0
    model_config: dict = dataclasses.field(default_factory=dict)  # the parsed config.pbtxt

    @property
    def device_id(self) -> int | None:
        """The instance's GPU, or None on the CPU."""
        return None if self.device == "cpu" else int(self.device.partition(":")[2] or 0)

    def served_model(self, network: str) -> str | None:
        """The served model this step calls for ``network`` (config parameter
        ``<network>_model``, written by ``tddfa build``), or None: run it in-process."""
        from tddfa.contract import bls_parameter

        return self.parameters.get(bls_parameter(network)) or None

    def network(
        self,
        name: str,
        warmup_dims: dict[str, tuple[int, ...]] | None = None,
        folder: Path | None = None,
        threads: int | None = None,
    ):
        """The runner of network ``name``: a BLS call to the served model when the config
        names one (:meth:`served_model`), else the network from ``folder`` (default
        ``<version>/<name>/``): the fastest runner present (tddfa.runners.make_runner), in the
        precision the build chose (``<name>_precision``), with CUDA graphs of every batch
        size made now on the GPU; ``threads``: onnxruntime's intra-op threads on the CPU
        (None: one per core)."""
        served = self.served_model(name)
        if served is not None:
            from tddfa.contract import SERVED_NETWORKS
            from tddfa_triton.bls import BlsRunner

            spec = SERVED_NETWORKS[name]
            face_shapes = {
                o.name: tuple(int(d) for d in o.shape[1:]) for o in spec.outputs if o.shape[0] == -1
            }
            return BlsRunner(
                served,
                [i.name for i in spec.inputs],
                [o.name for o in spec.outputs],
                self.device_id,
                face_shapes,
            )
        from tddfa.runners import make_runner

        runner = make_runner(
            folder if folder is not None else self.model_dir / name,
            self.device,
            threads=threads,
            cuda_graphs=self.device != "cpu",  # one graph per batch size, replayed
            fp16=self.parameters.get(f"{name}_precision", "fp16") == "fp16",
        )
        warmup = getattr(runner, "warmup", None)
        if warmup is not None and warmup_dims and self.max_batch_size:
            warmup(warmup_dims, range(1, self.max_batch_size + 1))
        return runner

    def detector(self, threads: int | None = None):
        """The face detector: a BLS call to the served ``face_detector`` model when the config
        names one (:meth:`served_model`), else :class:`tddfa.detector.Detector` over the
        FaceBoxes network in ``<version>/face_detector/`` (``threads``: as :meth:`network`)."""
        served = self.served_model("face_detector")
        if served is not None:
            from tddfa_triton.bls import BlsDetector

            return BlsDetector(served, self.config, self.device_id, self.max_batch_size)
        from tddfa.detector import Detector

        cfg = self.config
        canvas = {"DETECTOR_INPUT": (3, cfg.canvas_height, cfg.canvas_width)}
        return Detector(cfg, self.network("face_detector", canvas, threads=threads))


def _parameters(request) -> dict[str, Any]:
    """A request's parameters ({} when it has none); the ensemble forwards the client's."""
    raw = request.parameters()
    return json.loads(raw) if raw else {}


class StepModel:
    """Subclass and implement :meth:`build_step`; the rest is shared by every model."""

    def build_step(self, context: LoadContext):
        raise NotImplementedError

    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        parameters = {
            name: value.get("string_value", "")  # JSON omits an empty string
            for name, value in model_config.get("parameters", {}).items()
        }
        self.inputs = [(i["name"], bool(i.get("optional", False))) for i in model_config["input"]]
        # the sequence batcher's control tensors (START, END, READY, CORRID) arrive as inputs
        self.inputs += [
            (control["name"], True)
            for control in model_config.get("sequence_batching", {}).get("control_input", [])
        ]
        kind = args.get("model_instance_kind", "CPU")
        self.device_id = None if kind == "CPU" else int(args.get("model_instance_device_id", 0))
        device = "cpu" if self.device_id is None else f"cuda:{self.device_id}"
        scheduling = None
        if self.device_id is None:  # no BLAS worker spinning between frames
            from tddfa.cpu_threads import blas_on_one_thread

            blas_on_one_thread()
        if self.device_id is not None:
            import cupy  # every CuPy allocation of this instance lands on its device

            from tddfa.gpu_scheduling import CUDA_WAIT_PARAMETER, use_blocking_sync

            if parameters.get(CUDA_WAIT_PARAMETER) == "blocking":  # tddfa.gpu_scheduling
                scheduling = use_blocking_sync(self.device_id)
            cupy.cuda.Device(self.device_id).use()
        if install_stack_dump():  # evidence for a hung instance: docs/multi_gpu.md
            pb_utils.Logger.log_info(
                f"{args['model_name']} instance {args.get('model_instance_name', '?')}: pid "
                f"{os.getpid()}; `kill -USR1 {os.getpid()}` writes its Python stacks to this log"
            )
        self.context = LoadContext(
            model_name=args["model_name"],
            model_dir=Path(args["model_repository"]) / args["model_version"],
            device=device,
            input_names=tuple(name for name, _ in self.inputs),
            parameters=parameters,
            model_config=model_config,
            config=PipelineConfig.from_parameters(parameters),
            input_dims={
                i["name"]: tuple(int(d) for d in i.get("dims", ())) for i in model_config["input"]
            },
            max_batch_size=int(model_config.get("max_batch_size", 0)),
        )
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"])
            for o in model_config["output"]
        }
        self.step = self.build_step(self.context)
        describe = getattr(self.step, "describe", None)
        details = [describe()] if describe else []
        if "bfm" in parameters:  # every model that uses the BFM says which one, once
            details.append(f"BFM {parameters['bfm']}")
        if scheduling is not None:
            details.append(scheduling)
        pb_utils.Logger.log_info(
            f"{self.context.model_name} loaded on {device}"
            + (f": {'; '.join(details)}" if details else "")
        )

    def _read(self, request) -> dict[str, Any] | Exception:
        inputs = {}
        for name, optional in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                if optional:
                    continue
                return ValueError(f"input {name} is missing")
            inputs[name] = to_array(tensor, self.device_id, name)
        return inputs

    def execute(self, requests):
        try:
            results = run_batched(
                self.step, [self._read(r) for r in requests], [_parameters(r) for r in requests]
            )
        except Exception as exc:  # an internal failure: answer every request, keep serving
            pb_utils.Logger.log_error(f"{self.context.model_name}: {exc!r}")
            results = [RuntimeError(f"{self.context.model_name} failed: {exc}")] * len(requests)

        responses = []
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, Exception):
                code = (
                    pb_utils.TritonError.INVALID_ARG
                    if isinstance(result, ValueError)
                    else pb_utils.TritonError.INTERNAL
                )
                error = pb_utils.TritonError(f"{self.context.model_name}: {result}", code)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            wanted = set(request.requested_output_names()) or self.output_dtypes
            tensors = [
                to_tensor(name, result[name], dtype)
                for name, dtype in self.output_dtypes.items()
                if name in wanted  # only what was asked for: each costs the stub a copy
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        close = getattr(self.step, "close", None)
        if close:
            close()


class NetworkModel(StepModel):
    """A network served as a Python model (python flavour, ``tddfa build --networks models``):
    the fastest runner present (tddfa.runners.make_runner) over the files in the version
    folder; the steps call it through BLS (tddfa_triton.bls)."""

    def build_step(self, context: LoadContext):
        from tddfa.steps import NetworkStep

        k = context.config.max_faces  # a dynamic face axis (-1) is warmed up at K
        dims = {
            name: tuple(k if d == -1 else d for d in shape)
            for name, shape in context.input_dims.items()
        }
        return NetworkStep(context.network(context.model_name, dims, folder=context.model_dir))


class SequenceModel(StepModel):
    """A StepModel whose step keeps per-sequence state in ``step.store``
    (tddfa.sequence_store.SequenceStore): a timer thread frees sequences idle for longer than the
    config's ``max_sequence_idle_microseconds`` (the sequence batcher frees its own slot then
    but does not tell the model) and publishes the number of open sequences as the gauge
    ``tddfa_open_sequences`` on Triton's /metrics."""

    SWEEP_SECONDS = 1.0

    @staticmethod
    def idle_timeout_seconds(context: LoadContext) -> float:
        batching = context.model_config.get("sequence_batching", {})
        micros = int(batching.get("max_sequence_idle_microseconds", 1_000_000))
        return max(micros, 1) / 1e6

    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        # the family must outlive its metrics: keep it on the model
        self._family = family = pb_utils.MetricFamily(
            name="tddfa_open_sequences",
            description="Sequences with tracking state in this model instance",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self._open = family.Metric(
            labels={
                "model": self.context.model_name,
                "instance": args.get("model_instance_name", ""),
            }
        )
        self._published = -1  # the gauge's last value
        # the sweeper and execute both publish: counting and setting under one lock, so a
        # count the sweeper read before a sequence started is never set after execute's
        self._publishing = threading.Lock()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="sequence-sweeper", daemon=True)
        self._sweeper.start()

    def _sweep(self) -> None:
        while not self._stop.wait(self.SWEEP_SECONDS):
            freed = self.step.store.sweep()
            if freed:
                pb_utils.Logger.log_info(
                    f"{self.context.model_name}: freed {freed} idle sequence(s)"
                )
            self._publish(always=True)

    def _publish(self, always: bool) -> None:
        """Set the gauge to the open sequences: ``always`` (the sweeper, every second), else
        only when the count changed (setting a metric is a round trip to tritonserver)."""
        with self._publishing:
            count = len(self.step.store)
            if always or count != self._published:
                self._published = count
                self._open.set(count)

    def execute(self, requests):
        responses = super().execute(requests)
        self._publish(always=False)  # a sequence started or ended
        return responses

    def finalize(self) -> None:
        self._stop.set()
        self._sweeper.join(timeout=5)
        super().finalize()
