"""The configs' tensors and ensemble wiring written from the graph's declaration
(:mod:`tddfa.graph`), and the check that a repository's configs agree with it.

``tddfa build`` calls :func:`write_graph` on the copied templates, so a built repository's
``input``/``output`` sections (dtypes, dims for the chosen K) and its ensembles' scheduling
are the declaration's; :func:`graph_problems` finds where configs differ from it (the
committed templates are checked at K = 8 by the tests). Everything else in a config
(backend, batching, instance groups, parameters) stays the template's.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2

from tddfa.graph import ENSEMBLES, STEPS, TENSORS

ModelConfig = model_config_pb2.ModelConfig

TRITON_DTYPES = {
    "uint8": model_config_pb2.TYPE_UINT8,
    "int32": model_config_pb2.TYPE_INT32,
    "float32": model_config_pb2.TYPE_FP32,
    "bool": model_config_pb2.TYPE_BOOL,
}


def _tensors(names, max_faces: int) -> list[tuple[str, int, list[int]]]:
    return [(n, TRITON_DTYPES[TENSORS[n].dtype], TENSORS[n].dims(max_faces)) for n in names]


def _declared(config: ModelConfig) -> tuple[list, list]:
    def listed(tensors):
        return [(t.name, t.data_type, list(t.dims)) for t in tensors]

    return listed(config.input), listed(config.output)


def _expected(name: str, max_faces: int) -> tuple[list, list]:
    if name in ENSEMBLES:
        ensemble = ENSEMBLES[name]
        return _tensors(ensemble.inputs, max_faces), _tensors(ensemble.outputs, max_faces)
    step = STEPS[name]
    return _tensors(step.inputs, max_faces), _tensors(step.outputs, max_faces)


def _set_tensors(field, tensors: list[tuple[str, int, list[int]]]) -> None:
    del field[:]
    for name, dtype, dims in tensors:
        field.add(name=name, data_type=dtype, dims=dims)


def _scheduling(name: str) -> list[tuple[str, list[str], list[str]]]:
    """(model, input_map keys, output_map keys) per step; every map is name -> same name."""
    return [(m, list(STEPS[m].inputs), list(STEPS[m].outputs)) for m in ENSEMBLES[name].steps]


def write_graph(configs: dict[str, ModelConfig], max_faces: int) -> None:
    """Write the declared tensors (and, for the ensembles, their steps) into ``configs``
    (the graph's models present in it), for ``max_faces`` face slots."""
    for name, config in configs.items():
        if name not in STEPS and name not in ENSEMBLES:
            continue  # a network model called through BLS: its tensors are the network's
        inputs, outputs = _expected(name, max_faces)
        _set_tensors(config.input, inputs)
        _set_tensors(config.output, outputs)
        if name in ENSEMBLES:
            steps = config.ensemble_scheduling.step
            del steps[:]
            for model, step_inputs, step_outputs in _scheduling(name):
                step = steps.add(model_name=model, model_version=-1)
                for tensor in step_inputs:
                    step.input_map[tensor] = tensor
                for tensor in step_outputs:
                    step.output_map[tensor] = tensor


def graph_problems(configs: dict[str, ModelConfig], max_faces: int) -> list[str]:
    """Where ``configs`` differ from the declaration at ``max_faces`` (empty = agree): a
    missing model, tensors (names, order, dtypes, dims), ensemble steps and their maps."""
    problems = []
    for name in (*STEPS, *ENSEMBLES):
        config = configs.get(name)
        if config is None:
            problems.append(f"{name}: not in the repository")
            continue
        for kind, got, want in zip(
            ("inputs", "outputs"), _declared(config), _expected(name, max_faces), strict=True
        ):
            if got != want:
                problems.append(f"{name}: {kind} {got} differ from tddfa.graph's {want}")
        if name in ENSEMBLES:
            got = [
                (s.model_name, list(s.input_map), list(s.output_map))
                for s in config.ensemble_scheduling.step
            ]
            wrong = [
                s.model_name
                for s in config.ensemble_scheduling.step
                if any(k != v for k, v in (*s.input_map.items(), *s.output_map.items()))
            ]
            if sorted(map(_sorted_maps, got)) != sorted(map(_sorted_maps, _scheduling(name))):
                problems.append(f"{name}: steps {got} differ from tddfa.graph's")
            if [m for m, _, _ in got] != list(ENSEMBLES[name].steps):
                problems.append(f"{name}: steps not in tddfa.graph's order")
            if wrong:
                problems.append(f"{name}: {wrong} map a tensor under another name")
    return problems


def _sorted_maps(step: tuple[str, list[str], list[str]]) -> tuple:
    model, inputs, outputs = step
    return model, sorted(inputs), sorted(outputs)
