"""Many videos through one server from one process: the pipelined path of ``tddfa video``.

Per video, three stages overlap, so the slowest one sets the pace, not their sum:

* a decode thread decodes (NVDEC or the CPU) and stages each frame in a free slot: copied
  into the slot's shared memory (device to device for NVDEC frames and CUDA shared memory,
  waited for with a blocking event, never a whole-device synchronisation) or into the
  request body; the request is built there too;
* the event loop sends every video's frames over its own gRPC bidirectional stream
  (``tritonclient.grpc.aio``; all the videos of the process share one connection), at most
  ``in_flight`` frames of a video in the server, and puts the answers back in frame order;
* an encode thread writes RENDERED (NVENC on the device, libx264 from the host) and the
  JSON lines, then frees the slot.

A slot (one input and one output region, reused frame after frame) is held from staging
until its frame is encoded, so frames in the server and frames waiting for the encoder stay
within ``in_flight`` per video. RENDERED is read in place from the output region: nothing is
copied out of it unless the encoder needs the host (libx264 on a GPU without NVENC). Only
RENDERED and VERTICES go through the region; the small outputs (face count, boxes, pose...)
come in the response, so reading them costs no device-to-host copy.

The frames of a sequence (``tddfa_track``) stay in order on their stream; independent frames
(``tddfa``) may be answered out of order and are matched by request id. A frame that gets no
answer within ``timeout`` s fails its video (ServerUnavailable); a refused frame fails its
video with the server's message (InferenceError); the other videos go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tddfa.contract import SEQUENCE_ENSEMBLE, STATELESS_ENSEMBLE
from tddfa.gpu_scheduling import use_blocking_sync
from tddfa_clients.errors import translate_error
from tddfa_clients.model_contract import FrameResult, read_contract
from tddfa_clients.transport import GRPC_KEEPALIVE, Transport, end_sequence, normalize_url
from tddfa_clients.video_io import EncoderSettings, VideoStats
from tddfa_clients.video_pipeline import VideoPipeline
from tddfa_tools.signals import Terminated

LOG = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclasses.dataclass(frozen=True)
class VideoJob:
    """One video: ``output`` None drops the rendered frames (benchmarks)."""

    source: Path
    output: Path | None = None
    json_path: Path | None = None
    repeat: int = 1  # decode the source this many times in a row (benchmarks; no output)
    # called with (frame index, FrameResult) for every frame in order, in place of an
    # encoder; RENDERED is a view of the slot's region, valid during the call only
    sink: Callable[[int, FrameResult], None] | None = None

    def __post_init__(self) -> None:
        if self.repeat < 1 or (self.repeat > 1 and self.output is not None):
            raise ValueError("repeat must be >= 1, and 1 when the video is written")
        if self.sink is not None and self.output is not None:
            raise ValueError("a video goes to an output file or to a sink, not both")


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How every video of a :func:`run_videos` call is processed.

    ``shared_memory``: ``cuda`` (NVDEC frames copied device to device, RENDERED read on the
    device), ``system``, ``none`` or ``auto`` (system when the server is local); ``gpu``:
    NVDEC, NVENC and the CUDA regions (this process's numbering), ``server_gpu`` the same
    GPU as the server numbers it."""

    model: str = STATELESS_ENSEMBLE
    outputs: tuple[str, ...] = ("RENDERED", "FACE_COUNT")
    # 8, not 4: on two cores a tracked video's stages wait less for one another (the
    # tracker's detection frames take 3x a tracked one): 1.67 -> 1.83 cores busy and
    # about 8 % more frames/s file to file (benchmarks/RESULTS.md, 2026-12-07)
    in_flight: int = 8
    shared_memory: str = "auto"
    timeout: float = 120.0
    gpu: int = 0
    server_gpu: int | None = None
    parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    decoder: str = "auto"
    encoder: str = "auto"
    encoder_settings: EncoderSettings = EncoderSettings()
    smoothing: bool | None = None  # sequences: None = the server's default


class StreamClient:
    """Runs videos against one server: the model's contract is checked once, shared memory
    is registered through a synchronous connection (registration is per server, not per
    connection), frames go over an asyncio gRPC connection made in :meth:`run`."""

    def __init__(self, url: str, options: StreamOptions, progress: Any = None):
        if options.in_flight < 2 and options.model == SEQUENCE_ENSEMBLE:
            raise ValueError("a sequence needs in_flight >= 2 (one frame is held to mark the end)")
        self.url = normalize_url(url, "grpc")
        self.options = options
        self.outputs = tuple(dict.fromkeys(("FACE_COUNT", *options.outputs)))
        self.progress = progress  # a tqdm bar (or anything with update(n)), or None
        if options.shared_memory == "cuda" or options.decoder != "cpu":
            # before NVDEC and CuPy make the context: GPU waits sleep instead of spinning
            LOG.debug("GPU %d: %s", options.gpu, use_blocking_sync(options.gpu))
        try:
            self.transport = Transport("grpc", self.url, options.in_flight, options.timeout)
        except Exception as exc:
            raise translate_error(exc) from exc
        self._ending = threading.Lock()  # the transport's sequence stream, one caller at a time
        try:
            self.contract = read_contract(self.transport, options.model, self.url, self.outputs)
        except BaseException:
            self.transport.close()
            raise

    def run(self, jobs: Sequence[VideoJob]) -> list[VideoStats | BaseException]:
        """Process ``jobs`` concurrently; per job its VideoStats or the error that failed it
        (VideoError, ClientError, OSError).

        Ctrl-C, SIGTERM and SIGHUP cancel every video at its next wait (each cleans up:
        staging files, shared memory, its sequence ended), then raise KeyboardInterrupt
        (:class:`tddfa_tools.signals.Terminated` for the last two), as the CLI expects. The
        event loop takes the signals itself: an exception raised at any point of the loop's
        C code (gRPC's) is not safe."""
        stopped: list[int] = []
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        try:
            return asyncio.run(self._run(jobs, stopped))
        except asyncio.CancelledError:
            if not stopped:
                raise
            if stopped[0] == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise Terminated(stopped[0]) from None
        finally:
            if threading.current_thread() is threading.main_thread():
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    async def _run(
        self, jobs: Sequence[VideoJob], stopped: list[int]
    ) -> list[VideoStats | BaseException]:
        import tritonclient.grpc.aio as aio

        if threading.current_thread() is threading.main_thread():
            loop, task = asyncio.get_running_loop(), asyncio.current_task()

            def stop(signum: int) -> None:
                if not stopped:  # one stop is enough: let the cleanup finish
                    stopped.append(signum)
                    task.cancel()

            for sig in STOP_SIGNALS:
                loop.add_signal_handler(sig, stop, sig)
        keepalive = aio.KeepAliveOptions(**GRPC_KEEPALIVE)
        connection = aio.InferenceServerClient(self.url, keepalive_options=keepalive)
        tasks = [asyncio.ensure_future(VideoPipeline(self, j, connection).process()) for j in jobs]
        try:
            return await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            await asyncio.wait(tasks)  # each video finishes its cleanup (they were cancelled)
            raise
        finally:
            await connection.close()

    def end_sequence(self, sequence_id: int) -> None:
        """End a sequence stopped early (one black END frame; from any thread)."""
        with self._ending:
            end_sequence(
                self.transport, self.options.model, sequence_id, self.contract.batched,
                self.options.timeout,
            )  # fmt: skip

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_videos(
    url: str, jobs: Sequence[VideoJob], options: StreamOptions, progress: Any = None
) -> list[VideoStats | BaseException]:
    """:class:`StreamClient` for one call: every job's stats or its error, in order."""
    with StreamClient(url, options, progress) as client:
        return client.run(jobs)
