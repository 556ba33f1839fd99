"""Read, write and check Triton model configs (config.pbtxt) with Triton's own protobuf schema."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tddfa.files import write_text

ModelConfig = model_config_pb2.ModelConfig


def load_config(path: Path) -> ModelConfig:
    """Parse a config.pbtxt; a syntax error names the file and the position."""
    try:
        return text_format.Parse(Path(path).read_text(), ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def save_config(config: ModelConfig, path: Path) -> None:
    """Write a config.pbtxt atomically."""
    write_text(path, text_format.MessageToString(config))


def load_repository(repository: Path) -> dict[str, ModelConfig]:
    """Every model of a repository: {name: config}."""
    return {p.parent.name: load_config(p) for p in sorted(Path(repository).glob("*/config.pbtxt"))}


def _dtype_name(dtype: int) -> str:
    return model_config_pb2.DataType.Name(dtype)


def _dims_agree(a, b) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def check_ensemble(configs: dict[str, ModelConfig], ensemble: str = "tddfa") -> list[str]:
    """Problems with the ensemble's wiring (empty list = consistent).

    Checks, step by step in order, that every mapped input was produced upstream with
    the same dtype and dims, that every required model input is mapped, that mapped
    outputs exist, that the ensemble's outputs are produced, and batch sizes agree.
    """
    problems: list[str] = []
    if ensemble not in configs:
        return [f"no ensemble model {ensemble!r} in the repository"]
    top = configs[ensemble]
    tensors = {t.name: (t.data_type, list(t.dims)) for t in top.input}
    for step in top.ensemble_scheduling.step:
        model = configs.get(step.model_name)
        if model is None:
            problems.append(f"step {step.model_name!r} is not in the repository")
            continue
        where = f"{ensemble} -> {step.model_name}"
        if model.max_batch_size < top.max_batch_size:
            problems.append(
                f"{where}: max_batch_size {model.max_batch_size} < ensemble's {top.max_batch_size}"
            )
        inputs = {t.name: t for t in model.input}
        for model_input, tensor in step.input_map.items():
            if model_input not in inputs:
                problems.append(f"{where}: maps {model_input!r}, which the model does not declare")
            elif tensor not in tensors:
                problems.append(f"{where}: input {tensor!r} is not produced by any earlier step")
            else:
                dtype, dims = tensors[tensor]
                declared = inputs[model_input]
                if dtype != declared.data_type:
                    problems.append(
                        f"{where}: {tensor!r} is {_dtype_name(dtype)} upstream but "
                        f"{model_input!r} expects {_dtype_name(declared.data_type)}"
                    )
                if not _dims_agree(dims, list(declared.dims)):
                    problems.append(
                        f"{where}: {tensor!r} has dims {dims} upstream but {model_input!r} "
                        f"expects {list(declared.dims)}"
                    )
        for name, declared in inputs.items():
            if name not in step.input_map and not declared.optional:
                problems.append(f"{where}: required input {name!r} is not mapped")
        outputs = {t.name: t for t in model.output}
        for model_output, tensor in step.output_map.items():
            if model_output not in outputs:
                problems.append(f"{where}: maps output {model_output!r}, which the model lacks")
            else:
                tensors[tensor] = (
                    outputs[model_output].data_type,
                    list(outputs[model_output].dims),
                )
    consumed = {t for step in top.ensemble_scheduling.step for t in step.input_map.values()}
    for output in top.output:
        if output.name in consumed:
            problems.append(
                f"{ensemble}: output {output.name!r} is also a step input; Triton 2.51 then prunes "
                "its producer when a client requests it alone: give the step input its own tensor"
            )
        if output.name not in tensors:
            problems.append(f"{ensemble}: output {output.name!r} is produced by no step")
        elif tensors[output.name][0] != output.data_type or not _dims_agree(
            tensors[output.name][1], list(output.dims)
        ):
            problems.append(f"{ensemble}: output {output.name!r} dtype/dims disagree with its step")
    return problems


_TRITON_DTYPES = {
    "uint8": "TYPE_UINT8",
    "int32": "TYPE_INT32",
    "float32": "TYPE_FP32",
    "bool": "TYPE_BOOL",
}


def check_bls(configs: dict[str, ModelConfig]) -> list[str]:
    """Problems with the BLS calls the Python steps make (empty list = consistent).

    A step calls a served network model when its config has the parameter
    ``<network>_model`` (tddfa.contract.bls_parameter). Checks that the named model is in
    the repository, is not an ensemble or the step itself, takes batches as large as the
    step's, and declares every tensor of tddfa.contract.SERVED_NETWORKS[network] with its
    dtype and dims ("K" = the step's ``max_faces``).
    """
    from tddfa.contract import SERVED_NETWORKS, bls_parameter

    problems: list[str] = []
    for name, config in configs.items():
        for network, spec in SERVED_NETWORKS.items():
            key = bls_parameter(network)
            if key not in config.parameters:
                continue
            served = config.parameters[key].string_value
            where = f"{name} -> {served!r} (BLS, parameter {key})"
            target = configs.get(served)
            if target is None:
                problems.append(f"{where}: no such model in the repository")
                continue
            if target.platform == "ensemble" or served == name:
                problems.append(f"{where}: must name a network model, not {served!r} itself")
                continue
            if target.max_batch_size < config.max_batch_size:
                problems.append(
                    f"{where}: max_batch_size {target.max_batch_size} < the caller's "
                    f"{config.max_batch_size}"
                )
            k = (
                config.parameters["max_faces"].string_value
                if "max_faces" in config.parameters
                else ""
            )
            faces = int(k) if k.isdigit() else -1
            for kind, declared, wanted in (
                ("input", target.input, spec.inputs),
                ("output", target.output, spec.outputs),
            ):
                tensors = {t.name: t for t in declared}
                for tensor in wanted:
                    if tensor.name not in tensors:
                        problems.append(f"{where}: the model has no {kind} {tensor.name!r}")
                        continue
                    found = tensors[tensor.name]
                    dtype = _TRITON_DTYPES[tensor.dtype]
                    if _dtype_name(found.data_type) != dtype:
                        problems.append(
                            f"{where}: {kind} {tensor.name!r} is "
                            f"{_dtype_name(found.data_type)}, the step uses {dtype}"
                        )
                    dims = [faces if d == "K" else d for d in tensor.shape]
                    if not _dims_agree(dims, list(found.dims)):
                        problems.append(
                            f"{where}: {kind} {tensor.name!r} has dims {list(found.dims)}, the "
                            f"step uses {dims}"
                        )
    return problems
