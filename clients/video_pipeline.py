"""One video's pipeline in the stream client (tddfa_clients.video_streams, which explains
the design): a decode thread that stages frames in free slots and builds their requests, the
exchange over the video's gRPC stream on the event loop (answers back in frame order, a
watchdog for frames the server does not answer), and an encode thread that writes each
answered frame (encoder, sink, JSON lines) and frees its slot."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from tddfa.contract import SEQUENCE_ENSEMBLE
from tddfa.files import atomic_paths
from tddfa_clients.errors import ClientError, ServerUnavailable, translate_error
from tddfa_clients.model_contract import INPUT, FrameResult
from tddfa_clients.shm_slots import close_slots, open_slots, output_layout
from tddfa_clients.transport import dims, new_sequence_id
from tddfa_clients.video_io import (
    VideoStats,
    check_output_name,
    json_lines,
    open_decoder,
    open_encoder,
    probe,
)

if TYPE_CHECKING:
    from tddfa_clients.video_streams import StreamClient, VideoJob

LOG = logging.getLogger(__name__)

REGION_OUTPUTS = ("RENDERED", "VERTICES")  # frame-sized: through shared memory
_END = object()  # the decode thread has sent every frame


@dataclasses.dataclass
class _Staged:
    """A frame in its slot, with the request that sends it."""

    slot: int
    index: int
    pts: int
    request: dict
    layout: dict[str, tuple[int, int]]
    sent: float = 0.0


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class VideoPipeline:
    """One video through the stream client (see the module doc)."""

    def __init__(self, client: StreamClient, job: VideoJob, connection: Any):
        self.client, self.job, self.connection = client, job, connection
        self.options = client.options
        self.sequence = self.options.model == SEQUENCE_ENSEMBLE
        self.stop = threading.Event()
        self.free: queue.Queue[int] = queue.Queue()
        self.done: queue.Queue[Any] = queue.Queue()  # answered frames, in order, for the encoder
        self.slots: list = []
        self.device_frames = False
        self.frames = 0
        self.error: BaseException | None = None
        self.sequence_id: int | None = None  # set once a sequence's first frame is staged
        self.sequence_ended = False  # its END frame went out

    async def process(self) -> VideoStats:
        job, options = self.job, self.options
        if job.output is not None:
            check_output_name(job.output)
        self.info = info = await asyncio.to_thread(probe, job.source)
        start = time.perf_counter()
        targets = [t for t in (job.output, job.json_path) if t is not None]
        with contextlib.ExitStack() as stack:
            temps = stack.enter_context(atomic_paths(targets))
            json_temp = temps[-1] if job.json_path is not None else None
            self.lines = stack.enter_context(json_lines([json_temp] if json_temp else []))
            self.decoder = await asyncio.to_thread(
                lambda: stack.enter_context(open_decoder(job.source, options.decoder, options.gpu))
            )
            self.encoder = None
            if job.output is not None:
                audio = job.source if info.has_audio else None
                self.encoder = await asyncio.to_thread(
                    lambda: stack.enter_context(
                        open_encoder(temps[0], info, options.encoder, audio, options.gpu,
                                     options.encoder_settings)
                    )
                )  # fmt: skip
            # here, not in a worker thread: a cancelled wait (Ctrl-C, SIGTERM) would leave the
            # regions it registers to nobody
            self.slots = open_slots(
                self.client.transport, self.client.url, options.shared_memory,
                options.in_flight, options.gpu, options.server_gpu,
            )  # fmt: skip
            stack.callback(close_slots, self.slots, options.timeout)
            self.kind = (
                "none"
                if not self.slots
                else "cuda"
                if options.shared_memory == "cuda"
                else "system"
            )
            self.device_frames = self.decoder.on_device and self.kind == "cuda"
            if self.device_frames:  # staging waits once, after its copy on the decoder's stream
                self.decoder.wait_each_frame = False
            for slot in range(options.in_flight):
                self.free.put(slot)
            await self._pipeline()
            encoder_name = self.encoder.name if self.encoder is not None else "none"
        if info.frame_count and self.frames != info.frame_count:
            LOG.warning(
                "%s: header says %d frames, did %d", job.source, info.frame_count, self.frames
            )
        return VideoStats(
            self.frames, time.perf_counter() - start, self.decoder.name, encoder_name, self.kind
        )

    # -- the three stages ---------------------------------------------------------------

    async def _pipeline(self) -> None:
        loop = asyncio.get_running_loop()
        self.staged: asyncio.Queue = asyncio.Queue()
        decode = threading.Thread(target=self._decode, args=(loop,), daemon=True)
        encode = threading.Thread(target=self._encode, daemon=True)
        decode.start()
        encode.start()
        try:
            await self._exchange()
        except BaseException as exc:
            self.error = self.error or exc
        finally:
            self.stop.set()
            self.done.put(_END)
            await asyncio.to_thread(decode.join)
            await asyncio.to_thread(encode.join)
            if self.sequence_id is not None and not self.sequence_ended:
                # stopped early (an error, Ctrl-C, SIGTERM): end it now, not at the idle timeout
                await asyncio.to_thread(self.client.end_sequence, self.sequence_id)
        if self.error is not None:
            raise self.error

    def _decode(self, loop: asyncio.AbstractEventLoop) -> None:
        """Decode, stage, hand over; a sequence's frame waits for the next one to learn
        whether it is the last (it is already in its slot: the look-ahead reads nothing
        the decoder may reuse)."""
        send = lambda item: loop.call_soon_threadsafe(self.staged.put_nowait, item)  # noqa: E731
        sequence = {}
        if self.sequence:
            self.sequence_id = new_sequence_id()
            sequence = {"sequence_id": self.sequence_id, "sequence_start": True}
            extra = {} if self.options.smoothing is None else {"smoothing": self.options.smoothing}
            merged = {**self.options.parameters, **extra}
            if merged:
                sequence["parameters"] = merged
        held: _Staged | None = None
        try:
            for frame in self._frames():
                slot = self._take_slot()
                if slot is None:  # the video failed elsewhere: stop sending
                    send(_END)
                    return
                staged = self._stage(slot, frame, sequence)
                sequence.pop("sequence_start", None)
                if self.sequence:
                    if held is not None:
                        send(held)
                    held = staged
                else:
                    send(staged)
            if held is not None:
                held.request["sequence_end"] = True
                send(held)
            send(_END)
        except BaseException as exc:  # noqa: BLE001  (reported by the event loop)
            send(_Failed(exc))

    def _frames(self) -> Any:
        """The decoder's frames, ``repeat`` times over (numbered on across the repeats; a
        decoder of its own for each pass, its decoding surfaces on the same stream)."""
        count = 0
        for frame in self.decoder:
            count += 1
            yield frame
        for number in range(1, self.job.repeat):
            with open_decoder(self.job.source, self.options.decoder, self.options.gpu) as again:
                if self.device_frames:
                    again.wait_each_frame = False
                self.decoder = again  # staging copies on the current decoder's stream
                for frame in again:
                    yield dataclasses.replace(frame, index=frame.index + number * count)

    def _take_slot(self) -> int | None:
        while not self.stop.is_set():
            try:
                return self.free.get(timeout=0.5)
            except queue.Empty:
                continue
        return None

    def _stage(self, slot: int, frame: Any, sequence: dict) -> _Staged:
        import tritonclient.grpc as grpc_module

        image = frame.image if self.device_frames else frame.host_image()
        shape = tuple(int(d) for d in image.shape)
        batch = (1,) if self.client.contract.batched else ()
        tensor = grpc_module.InferInput(INPUT, [*batch, *shape], "UINT8")
        outputs = [grpc_module.InferRequestedOutput(name) for name in self.client.outputs]
        layout: dict[str, tuple[int, int]] = {}
        if self.slots:
            region = self.slots[slot]
            nbytes = int(np.prod(shape))
            in_name = region.ensure("input", nbytes)
            if self.device_frames:
                with self.decoder.stream:  # ordered after the decoder's work on its stream
                    region.write(image)
            else:
                region.write(image)
            tensor.set_shared_memory(in_name, nbytes)
            in_response = [n for n in self.client.outputs if n not in REGION_OUTPUTS]
            layout, total = output_layout(
                self.client.contract, self.client.outputs, shape, self.kind == "cuda",
                self.options.parameters, in_response,
            )  # fmt: skip
            out_name = region.ensure("output", total)
            for requested in outputs:
                if requested.name() in layout:
                    offset, size = layout[requested.name()]
                    requested.set_shared_memory(out_name, size, offset=offset)
        else:
            tensor.set_data_from_numpy(image.reshape(*batch, *shape))
        request = {
            "model_name": self.options.model,
            "inputs": [tensor],
            "outputs": outputs,
            "request_id": str(frame.index),
            **sequence,
        }
        if not self.sequence and self.options.parameters:
            request["parameters"] = dict(self.options.parameters)
        return _Staged(slot, frame.index, frame.pts, request, layout)

    async def _exchange(self) -> None:
        """Send the staged frames over one stream; answers go to the encoder in order."""
        pending: dict[str, _Staged] = {}
        answered: dict[int, tuple[_Staged, FrameResult]] = {}
        next_index = 0
        timed_out = False

        async def requests():
            while True:
                item = await self.staged.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    self.error = item.error
                    return
                item.sent = time.monotonic()
                if item.request.get("sequence_end"):
                    self.sequence_ended = True
                pending[item.request["request_id"]] = item
                yield item.request

        responses = self.connection.stream_infer(requests())

        async def watchdog():
            nonlocal timed_out
            while True:
                await asyncio.sleep(min(1.0, self.options.timeout / 4))
                oldest = min((p.sent for p in pending.values()), default=None)
                if oldest is not None and time.monotonic() - oldest > self.options.timeout:
                    timed_out = True
                    responses.cancel()
                    return

        guard = asyncio.ensure_future(watchdog())
        try:
            async for result, error in responses:
                if error is not None:
                    raise translate_error(error)
                staged = pending.pop(result.get_response().id)
                answered[staged.index] = (staged, self._result(staged, result))
                while next_index in answered:
                    self.done.put(answered.pop(next_index))
                    next_index += 1
        except (asyncio.CancelledError, Exception) as exc:
            if timed_out:
                raise ServerUnavailable(
                    f"{self.job.source}: a frame got no answer within {self.options.timeout:.0f} "
                    "s: the server is stuck or overloaded; raise --timeout if it is only slow"
                ) from exc
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise translate_error(exc) from exc
        finally:
            guard.cancel()
        if self.error is None and (pending or answered):
            raise ClientError(f"{self.job.source}: the stream ended with frames unanswered")

    def _result(self, staged: _Staged, result: Any) -> FrameResult:
        arrays = {}
        skip = 1 if self.client.contract.batched else 0
        for name in self.client.outputs:
            if name in staged.layout:
                shape = dims(result.get_output(name).shape)
                view = self.slots[staged.slot].view(
                    staged.layout[name][0], self.client.contract.dtype(name), shape
                )
                arrays[name] = view[0] if skip else view
            else:
                array = result.as_numpy(name)
                if array is None:
                    raise ClientError(f"the server returned no {name} output")
                arrays[name] = array[0] if skip else array
        return FrameResult.from_outputs(arrays)

    def _encode(self) -> None:
        """Write the answered frames in order; free each slot once its frame is written."""
        stream = self._encoder_stream()
        with stream if stream is not None else contextlib.nullcontext():
            while True:
                item = self.done.get()
                if item is _END:
                    return
                staged, result = item
                if self.error is None:
                    try:
                        self._write(staged, result)
                    except BaseException as exc:  # noqa: BLE001  (fails this video)
                        self.error = exc
                        self.stop.set()
                self.free.put(staged.slot)

    def _encoder_stream(self) -> Any:
        """A CUDA stream of its own for reading RENDERED on the device (the legacy default
        stream would order it after every other video's work in this process)."""
        if self.kind != "cuda" or (self.encoder is None and self.job.sink is None):
            return None
        import cupy

        with cupy.cuda.Device(self.options.gpu):
            return cupy.cuda.Stream(non_blocking=True)

    def _write(self, staged: _Staged, result: FrameResult) -> None:
        if self.encoder is not None:
            self.encoder.write(result.rendered, staged.pts)
        if self.job.sink is not None:
            self.job.sink(staged.index, result)
        if self.lines is not None:
            from tddfa_clients.image import frame_record

            record = frame_record(staged.index, staged.pts, self.info.time_base, result)
            self.lines.write(json.dumps(record) + "\n")
        self.frames += 1
        if self.client.progress is not None:
            self.client.progress.update(1)
