"""One video through a :class:`~tddfa_clients.triton_client.FrameClient` (any protocol, one
server or several replicas), and how ``tddfa video`` chooses its transport.

``mesh`` adds an animated glTF of every tracked face (tddfa_clients.mesh_animation) to the
outputs; without an output video the frames are neither rendered nor encoded.

:func:`process_video` is the path of ``tddfa batch`` and of ``tddfa video`` over HTTP or to
several replicas (tddfa_clients.video_streams is the gRPC path): decode -> the ensemble,
several frames in flight -> encode (NVENC or libx264) with the input's timestamps, audio
copied. With NVDEC and a local GPU server, each decoded frame is copied device to device
into its CUDA shared memory slot (before the decoder is asked for the next one: it reuses
its surfaces) and RENDERED comes back the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tddfa.contract import SEQUENCE_ENSEMBLE, STATELESS_ENSEMBLE
from tddfa.files import atomic_paths
from tddfa_clients.cuda_shared_memory import cuda_shm
from tddfa_clients.image import frame_record, render_parameters
from tddfa_clients.mesh_animation import FaceAnimation
from tddfa_clients.replicas import open_frame_client
from tddfa_clients.triton_client import (
    ClientError,
    FrameClient,
    is_local,
    new_sequence_id,
    normalize_url,
    served_on_gpu,
)
from tddfa_clients.video_io import (
    Decoder,
    EncoderSettings,
    VideoStats,
    check_output_name,
    json_lines,
    nvidia_codec_available,
    open_decoder,
    open_encoder,
    probe,
)

LOG = logging.getLogger(__name__)
MODES = ("track", "detect")


def model_for(mode: str) -> str:
    """The ensemble a video mode talks to: ``track`` -> tddfa_track, ``detect`` -> tddfa."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return SEQUENCE_ENSEMBLE if mode == "track" else STATELESS_ENSEMBLE


def host_frames(decoder: Decoder) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """((index, pts), host RGB image) for each frame: the host transport path (an NVDEC
    frame is copied to the host here, before the decoder reuses its surface)."""
    for frame in decoder:
        yield (frame.index, frame.pts), frame.host_image()


def device_frames(decoder: Decoder) -> Iterator[tuple[tuple[int, int], Any]]:
    """((index, pts), image) with NVDEC frames left on the GPU: CuPy views of surfaces
    the decoder reuses, valid until the next frame is pulled. Only for a FrameClient in
    CUDA shared memory mode, whose ``infer_stream`` copies each frame into its slot before
    pulling the next."""
    for frame in decoder:
        yield (frame.index, frame.pts), frame.image


def frames_for(client: FrameClient, decoder: Decoder) -> Iterator[tuple[tuple[int, int], Any]]:
    """Device frames when both the decoder and the client's transport are on the GPU,
    else host frames."""
    if decoder.on_device and transport_of(client) == "cuda":
        return device_frames(decoder)
    return host_frames(decoder)


def transport_of(client: Any) -> str:
    """``cuda``, ``system`` or ``none``; a client over several replicas is always "none"
    (shared memory needs one local server)."""
    return getattr(client, "shared_memory_kind", "none")


def process_video(
    client: FrameClient,
    source: Path,
    output: Path | None,
    json_path: Path | None = None,
    decoder: str = "auto",
    encoder: str = "auto",
    progress: bool = True,
    description: str | None = None,
    gpu_id: int = 0,
    smoothing: bool | None = None,
    mesh: tuple[Path, FaceAnimation] | None = None,
    settings: EncoderSettings = EncoderSettings(),  # noqa: B008  (frozen)
) -> VideoStats:
    """Render ``source`` into ``output`` (and ``json_path``, and ``mesh``: the animated
    glTF's path and its recorder); raises VideoError/ClientError. ``output`` None: nothing
    is encoded (the client need not ask for RENDERED). Nothing is written unless every
    output is complete.

    ``gpu_id``: the GPU of NVDEC and NVENC (with a CUDA shared memory client: its
    ``cuda_device``, so frames are copied within one GPU). A client of the sequence
    ensemble (:func:`model_for` ``("track")``) sends the video as one Triton sequence, with
    ``smoothing`` as the sequence's choice (None: the server's default); a client of
    ``tddfa`` sends independent frames.
    """
    if output is not None:
        check_output_name(output)
    info = probe(source)
    if transport_of(client) == "cuda":
        gpu_id = client.cuda_device
    audio = source if info.has_audio else None
    start = time.perf_counter()
    animation = mesh[1] if mesh is not None else None
    targets = [output, json_path, mesh[0] if mesh is not None else None]
    with atomic_paths([p for p in targets if p is not None]) as staged:
        temps = iter(staged)
        temp_video, temp_json, temp_mesh = (next(temps) if p is not None else None for p in targets)
        with (
            json_lines([temp_json] if temp_json is not None else []) as lines,
            open_decoder(source, decoder, gpu_id=gpu_id) as dec,
            _encoder(temp_video, info, encoder, audio, gpu_id, settings) as enc,
        ):
            LOG.debug(
                "decoder: %s, transport: %s shared memory, encoder: %s",
                dec.name,
                transport_of(client),
                enc.name if enc is not None else "none",
            )
            bar = tqdm(
                total=info.frame_count or None,
                unit="frame",
                desc=description or source.name,
                disable=not progress,
                leave=False,
            )
            with bar:
                sequence = {}
                if client.model == SEQUENCE_ENSEMBLE:
                    sequence["sequence_id"] = new_sequence_id()
                    if smoothing is not None:
                        sequence["sequence_parameters"] = {"smoothing": smoothing}
                frames = frames_for(client, dec)
                frames_done = 0
                for (index, pts), result in client.infer_stream(frames, **sequence):
                    if enc is not None:
                        enc.write(result.rendered, pts)
                    if animation is not None:
                        animation.add(float(pts * info.time_base), result)
                    if lines is not None:
                        record = frame_record(index, pts, info.time_base, result)
                        lines.write(json.dumps(record) + "\n")
                    frames_done += 1
                    bar.update(1)
            names = (dec.name, enc.name if enc is not None else "none", transport_of(client))
        if animation is not None:
            animation.write(temp_mesh)
    frames = frames_done
    if info.frame_count and frames != info.frame_count:
        LOG.warning("%s: header says %d frames, decoded %d", source, info.frame_count, frames)
    return VideoStats(frames, time.perf_counter() - start, *names)


def _encoder(path: Path | None, info, encoder: str, audio, gpu_id: int, settings):
    """The encoder of ``path``, or a null context yielding None (no output video)."""
    if path is None:
        return contextlib.nullcontext(None)
    return open_encoder(path, info, encoder, audio, gpu_id, settings)


def choose_transport(
    shared_memory: str, decoder: str, url: str, protocol: str, model: str = "tddfa"
) -> str:
    """``--shared-memory auto`` resolved: "cuda" when frames can stay on the GPU end to end
    (NVDEC decodes, the server is on this host and the steps that read the frame run on the
    GPU, tritonclient's CUDA shared memory imports), else "auto" (system shared memory when
    local). An explicit choice is returned as given."""
    if shared_memory != "auto":
        return shared_memory
    nvdec = decoder == "nvdec" or (decoder == "auto" and nvidia_codec_available())
    if not nvdec or not is_local(normalize_url(url, protocol)):
        return "auto"
    if not served_on_gpu(url, protocol, model):
        LOG.debug("the server's models are not on the GPU: frames go through the host")
        return "auto"
    try:
        cuda_shm()
    except ClientError as exc:
        LOG.warning("NVDEC frames go through the host: %s", exc)
        return "auto"
    return "cuda"


def open_client(args: argparse.Namespace, outputs: tuple[str, ...]) -> FrameClient:
    """The FrameClient of ``tddfa video``; CUDA shared memory chosen automatically falls
    back to the host transport (with the reason) when the server refuses it."""
    transport = "none" if args.no_shm else args.shared_memory
    transport = choose_transport(
        transport, args.decoder, args.url, args.protocol, model_for(args.mode)
    )

    def client(mode: str) -> FrameClient:
        # a name behind which several servers answer (headless Service): frames go to all
        return open_frame_client(
            args.url,
            args.protocol,
            model=model_for(args.mode),
            outputs=outputs,
            in_flight=args.in_flight,
            shared_memory=mode,
            cuda_device=args.gpu,
            rendered_on_device=mode == "cuda",
            timeout=args.timeout,
            parameters=render_parameters(args.render),
        )

    if transport == "cuda" and args.shared_memory == "auto" and not args.no_shm:
        try:
            return client("cuda")
        except ClientError as exc:
            LOG.warning("CUDA shared memory refused (%s): frames go through the host", exc)
            return client("auto")
    return client(transport)


def streams_possible(url: str, protocol: str) -> bool:
    """True when the videos can go over gRPC streams to one server (not HTTP, and not a
    name behind which several replicas answer: those take one video at a time with
    failover, tddfa_clients.replicas)."""
    from tddfa_clients.endpoints import is_fixed, resolve, split_url

    if protocol != "grpc":
        return False
    host, port = split_url(normalize_url(url, protocol))
    if is_fixed(host):
        return True
    try:
        return len(resolve(host, port)) == 1
    except OSError:
        return True  # a name that does not resolve fails with its reason when connecting
