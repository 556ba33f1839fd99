"""The ensembles in one process, from a built model repository, without Triton.

Runs the same step objects as the served models (tddfa.steps) on the same built files, in
the order and with the wiring of the graph's declaration (tddfa.graph, which the built
configs are written from), so tests can compare the server with it and benchmarks can
measure Triton's overhead. ``Pipeline`` is the stateless ``tddfa`` ensemble;
``Pipeline.track`` runs frames of one sequence as ``tddfa_track`` does.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from tddfa.aligner import Aligner
from tddfa.bfm import load_bfm
from tddfa.config import REGRESSOR_SIZE, PipelineConfig
from tddfa.contract import DEFAULT_RENDER_MODE, RENDER_MODE_PARAMETER
from tddfa.detector import Detector
from tddfa.graph import ENSEMBLES, SEQUENCE_ENSEMBLE, STATELESS_ENSEMBLE, STEPS
from tddfa.render.step import build_render_step, build_vertices_step
from tddfa.sequence_store import SequenceStore
from tddfa.steps import SEQUENCE_CONTROLS, AlignerStep, DetectorStep, TrackerStep
from tddfa.tracking import Tracker


class Pipeline:
    """``Pipeline(repository)(images)`` -> the ``tddfa`` ensemble's outputs (batch first)."""

    def __init__(self, repository: Path, device: str = "cpu", render: bool = True):
        from tddfa.runners import make_runner

        repository = Path(repository)
        build = json.loads((repository / "BUILD.json").read_text())
        if build.get("flavour", "python") != "python":
            raise ValueError(
                f"{repository} is a {build['flavour']} build: its networks are served natively "
                "(one-graph detector, engines); the in-process pipeline runs python-flavour "
                "repositories: build one with `tddfa build --flavour python`"
            )
        fields = {f.name for f in dataclasses.fields(PipelineConfig)}
        self.config = cfg = PipelineConfig(**{k: v for k, v in build.items() if k in fields})
        tracker_config = _parameters(repository / "face_tracker" / "config.pbtxt")
        self.track_config = PipelineConfig.from_parameters(
            {**dataclasses.asdict(cfg), **tracker_config}
        )
        batch_sizes = range(1, int(build.get("max_batch_size", 1)) + 1)

        def runner(model: str, network: str, dims: dict):
            # as the served GPU steps run them: CUDA graphs, each network's precision
            owner = _network_owner(repository, model, network)
            config = _parameters(repository / owner / "config.pbtxt")
            version = repository / owner / "1"
            run = make_runner(
                version / network if owner == model else version,
                device,
                cuda_graphs=device != "cpu",
                fp16=config.get(f"{network}_precision", "fp16") == "fp16",
            )
            if device != "cpu" and hasattr(run, "warmup"):  # graphs now, not under traffic
                run.warmup(dims, batch_sizes)
            return run

        canvas = {"DETECTOR_INPUT": (3, cfg.canvas_height, cfg.canvas_width)}
        crops = {"CROPS": (cfg.max_faces, 3, REGRESSOR_SIZE, REGRESSOR_SIZE)}
        bfm = load_bfm(repository / "face_aligner" / "1" / "bfm.npz")
        self.detector = DetectorStep(
            Detector(cfg, runner("face_detector", "face_detector", canvas))
        )
        aligner = Aligner(cfg, runner("face_aligner", "face_regressor", crops), bfm)
        self.aligner = AlignerStep(aligner)
        self.tracker = TrackerStep(
            Tracker(self.track_config, self.detector.detector, aligner),
            SequenceStore(idle_timeout=3600),
        )
        self.vertices = build_vertices_step(repository / "face_vertices" / "1")
        self.renderer = None
        if render:  # the served renderer's own files and settings
            render_config = PipelineConfig.from_parameters(
                {
                    **dataclasses.asdict(cfg),
                    **_parameters(repository / "face_renderer" / "config.pbtxt"),
                }
            )
            self.renderer = build_render_step(
                repository / "face_renderer" / "1", device, render_config
            )

    def steps(self) -> dict[str, Any]:
        """{model: the step object it runs} (face_renderer None with ``render=False``)."""
        return {
            "face_detector": self.detector,
            "face_aligner": self.aligner,
            "face_tracker": self.tracker,
            "face_renderer": self.renderer,
            "face_vertices": self.vertices,
        }

    def run_ensemble(
        self, ensemble: str, t: dict, parameters: dict | None = None, on_step=None
    ) -> dict[str, Any]:
        """Run ``ensemble``'s steps (tddfa.graph) on the tensors ``t`` (its input, plus the
        sequence controls for the sequence ensemble), each step given the tensors it
        declares; ``parameters``: the request's parameters, for the steps that read them.
        ``on_step(model)`` is called after each step (benchmarks time them). Returns the
        ensemble's outputs that were computed (RENDERED only with the renderer)."""
        steps = self.steps()
        frames = len(t["IMAGE"])
        for model in ENSEMBLES[ensemble].steps:
            step = steps[model]
            if step is None:  # no renderer
                continue
            extra = {}
            if getattr(step, "request_parameters", ()):
                chosen = {
                    k: v for k, v in (parameters or {}).items() if k in step.request_parameters
                }
                extra["parameters"] = [chosen] * frames
            t.update(step.run({name: t[name] for name in _inputs(model, t)}, **extra))
            if on_step is not None:
                on_step(model)
        return {name: t[name] for name in ENSEMBLES[ensemble].outputs if name in t}

    def __call__(self, images, render_mode: str = DEFAULT_RENDER_MODE) -> dict[str, Any]:
        """images: (B,H,W,3) uint8 RGB (or one (H,W,3) frame) -> {output: (B, ...)}."""
        if images.ndim == 3:
            images = images[None]
        t = {"IMAGE": images}
        self.detector.validate(t)
        return self.run_ensemble(STATELESS_ENSEMBLE, t, {RENDER_MODE_PARAMETER: render_mode})

    def track(
        self,
        image,
        sequence_id: int,
        start: bool = False,
        end: bool = False,
        settings: dict[str, Any] | None = None,
    ):
        """One frame (H,W,3) of sequence ``sequence_id`` -> ``tddfa_track``'s outputs (1, ...).
        ``settings``: the sequence's request parameters on its START frame, e.g.
        ``{"smoothing": False}`` (tddfa.sequence_store.SEQUENCE_SETTINGS)."""
        images = image[None] if image.ndim == 3 else image
        t = {
            "IMAGE": images,
            "START": np.asarray([[int(start)]], np.int32),
            "END": np.asarray([[int(end)]], np.int32),
            "READY": np.ones((1, 1), np.int32),
            "CORRID": np.asarray([[sequence_id]], np.uint64),
        }
        self.tracker.validate(t)
        self.tracker.validate_parameters(settings or {})
        return self.run_ensemble(SEQUENCE_ENSEMBLE, t, dict(settings or {}))

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()


def _network_owner(repository: Path, model: str, network: str) -> str:
    """The model whose files hold ``network`` for ``model``: ``model`` itself
    (``<version>/<network>/``), or the served network model it calls through BLS
    (``--networks models``: the network in that model's version folder)."""
    return model if (repository / model / "1" / network).is_dir() else network


def _inputs(model: str, t: dict) -> list[str]:
    """The tensors ``model`` reads: its declared inputs, plus the sequence controls present."""
    controls = [name for name in SEQUENCE_CONTROLS if name in t] if model == "face_tracker" else []
    return [*STEPS[model].inputs, *controls]


def _parameters(config_path: Path) -> dict[str, str]:
    """The string ``parameters`` of a config.pbtxt (what its model reads at load), parsed
    with Triton's own schema."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}
