"""`tddfa build`: write a servable model repository for a flavour, a device, K and a canvas.

The committed ``model_repository/`` holds the configs and adapters of the default
(python flavour, CPU, K = 8, 720x1280 canvas). This tool copies it into a build folder,
adds the built networks and tables, and rewrites the configs with Triton's protobuf
schema for the chosen options; a rewritten repository is checked (ensemble wiring, the
contract, the BLS calls) before it replaces the old one, so a failed build never leaves a
half-written repository behind. Where each flavour runs the networks: tddfa_tools.build.flavours.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from tddfa.contract import SEQUENCE_ENSEMBLE, STATELESS_ENSEMBLE
from tddfa_tools.build.exports import BuiltModels, export_models
from tddfa_tools.build.flavours import (
    check_native_models,
    configure_networks,
    layout_for,
    link,
    place_network_files,
)
from tddfa_tools.build.graph_config import graph_problems, write_graph
from tddfa_tools.build.model_config import (
    check_bls,
    check_ensemble,
    load_repository,
    save_config,
)
from tddfa_tools.build.options import BuildOptions

log = logging.getLogger(__name__)



def _template() -> Path:
    """The committed ``model_repository/`` (configs and adapters of the default build): package
    data of an installed wheel, else the checkout's folder (an editable install)."""
    packaged = Path(__file__).resolve().parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "model_repository"


TEMPLATE = _template()
ENSEMBLES = (STATELESS_ENSEMBLE, SEQUENCE_ENSEMBLE)
# Models that read the BFM tables (<version>/bfm.npz) and say which BFM they use.
BFM_MODELS = ("face_aligner", "face_tracker", "face_renderer", "face_vertices")
# The steps a user may size with --instance-count: every model of the template but the ensembles.
TEMPLATE_MODELS = tuple(
    sorted(p.parent.name for p in TEMPLATE.glob("*/config.pbtxt") if p.parent.name not in ENSEMBLES)
)


def configure(configs: dict, options: BuildOptions, models: BuiltModels) -> None:
    """Rewrite the template configs in place for ``options``."""
    write_graph(configs, options.pipeline.max_faces)  # tensors and wiring: tddfa.graph
    pipeline_values = options.pipeline.to_parameters()
    gpu = options.device == "gpu"
    counts = dict(options.instance_counts)
    bfm_kind = "exact" if models.bfm_exact else "approximate"
    for name, config in configs.items():
        config.max_batch_size = options.max_batch_size
        if name in ENSEMBLES:
            continue
        for key in config.parameters:
            if key in pipeline_values:
                config.parameters[key].string_value = pipeline_values[key]
        _instance_groups(config, counts.get(name, options.instances), options)
        if gpu and config.backend == "python":  # device tensors (DLPack), never host copies
            config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
        if "regressor" in config.parameters:
            config.parameters["regressor"].string_value = models.regressor_name
        if name in BFM_MODELS:
            config.parameters["bfm"].string_value = bfm_kind


def _instance_groups(config, count: int, options: BuildOptions) -> None:
    """``count`` instances on the CPU, on the default GPU, or on each of ``options.gpus``."""
    del config.instance_group[:]
    if options.device != "gpu":
        config.instance_group.add(count=count, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
        return
    group = config.instance_group.add(
        count=count, kind=model_config_pb2.ModelInstanceGroup.KIND_GPU
    )
    group.gpus.extend(options.gpus)  # empty: every visible GPU gets `count` instances


def _template_ignore(folder: str, names: list[str]) -> set[str]:
    """copytree's filter: caches, and top-level folders that are not models."""
    ignored = {name for name in names if name == "__pycache__"}
    if Path(folder) == TEMPLATE:
        ignored |= {
            n
            for n in names
            if (TEMPLATE / n).is_dir() and not (TEMPLATE / n / "config.pbtxt").is_file()
        }
    return ignored


def build_repository(options: BuildOptions) -> Path:
    """Build the repository into ``options.out`` (replaced only when the build succeeded)."""
    layout = layout_for(options.flavour, options.networks)
    models = export_models(options)
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        repo = staging / "repo"
        # model folders only (a config.pbtxt): a stray folder would fail Triton's start-up
        shutil.copytree(TEMPLATE, repo, ignore=_template_ignore)
        for ensemble in ENSEMBLES:  # ensembles need an (empty) version folder
            (repo / ensemble / "1").mkdir(exist_ok=True)
        configs = load_repository(repo)
        configure_networks(configs, layout, gpu=options.device == "gpu", fp16=options.fp16)
        configure(configs, options, models)
        problems = [p for ensemble in ENSEMBLES for p in check_ensemble(configs, ensemble)]
        problems += graph_problems(configs, options.pipeline.max_faces) + check_bls(configs)
        problems += check_native_models(configs, layout, models)
        if problems:  # checked before the files are placed: engine builds take minutes
            raise RuntimeError("built repository is inconsistent:\n  " + "\n  ".join(problems))
        place_network_files(repo, layout, options, models)
        for model in BFM_MODELS:
            link(models.bfm, repo / model / "1" / "bfm.npz")
        link(models.render_assets, repo / "face_renderer" / "1" / "render_assets.npz")
        for name, config in configs.items():
            save_config(config, repo / name / "config.pbtxt")
        (repo / "BUILD.json").write_text(
            json.dumps(
                {
                    "flavour": options.flavour,
                    "networks": options.networks,
                    "device": options.device,
                    "max_batch_size": options.max_batch_size,
                    "fp16": options.fp16,
                    "gpus": list(options.gpus),
                    "regressor": models.regressor_name,
                    "bfm": "exact" if models.bfm_exact else "approximate",
                    **dataclasses.asdict(options.pipeline),
                },
                indent=2,
            )
        )
        if out.exists():
            old = staging / "old"
            out.rename(old)
        repo.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "model repository written to %s (%s flavour, networks %s, %s)",
        out,
        options.flavour,
        options.networks,
        options.device,
    )
    return out
