"""Closed-loop load like perf_analyzer's concurrency mode, asking for the outputs a client asks
for.

perf_analyzer (2.51) always requests every output of a model; for the ensembles that means
VERTICES (3.7 MB a frame, and the face_vertices step) although no video client asks for it.
This driver keeps ``concurrency`` requests in flight over gRPC (``tritonclient.grpc.aio``),
each context sending its next frame as soon as the last one is answered, with real frames
placed once in shared memory (``system`` or ``cuda``; one input region per distinct frame,
shared by every context, and one output region per context) or sent in the request body
(``none``), and only ``outputs`` requested (FACE_COUNT always; RENDERED and VERTICES through
the output region, the small ones in the response). With ``sequence_length`` every context
sends sequences of that many consecutive frames (START on the first, END on the last), as
perf_analyzer's sequence mode does for the sequence ensemble.

Throughput and latency percentiles are read over ``measurement_ms`` after a warm-up window;
``processes`` > 1 splits the contexts over client processes (one Python process sends a few
thousand requests a second) and sums their throughput.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing as mp
import time
from collections.abc import Sequence

import numpy as np

from tddfa_clients.errors import translate_error
from tddfa_clients.model_contract import INPUT, read_contract
from tddfa_clients.shm_slots import close_slots, open_slots, output_layout
from tddfa_clients.transport import GRPC_KEEPALIVE, Transport, new_sequence_id, normalize_url

REGION_OUTPUTS = ("RENDERED", "VERTICES")
CSV_FIELDS = ("Concurrency", "Inferences/Second", "p50 latency", "p90 latency", "p99 latency")


@dataclasses.dataclass(frozen=True)
class LoadSettings:
    url: str
    model: str
    outputs: tuple[str, ...]
    shared_memory: str = "none"  # none | system | cuda
    sequence_length: int | None = None
    measurement_ms: int = 5000
    timeout: float = 120.0
    gpu: int = 0


def measure(settings: LoadSettings, frames: Sequence[np.ndarray], concurrency: int,
            processes: int = 1) -> dict[str, float]:  # fmt: skip
    """One concurrency level: {"Concurrency", "Inferences/Second", "p50/p90/p99 latency"
    (microseconds, as perf_analyzer's CSV)}."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (k < concurrency % processes) for k in range(processes)]
    if processes == 1:
        parts = [_measure_here(settings, list(frames), concurrency)]
    else:
        context = mp.get_context("spawn")
        with context.Pool(processes) as pool:
            parts = pool.starmap(
                _measure_here, [(settings, list(frames), share) for share in shares]
            )
    latencies = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    row = {"Concurrency": concurrency, "Inferences/Second": sum(p[0] for p in parts)}
    for q in (50, 90, 99):
        row[f"p{q} latency"] = float(np.percentile(latencies, q) * 1e6) if latencies.size else 0.0
    return row


def _measure_here(settings: LoadSettings, frames: list[np.ndarray], concurrency: int):
    """(infer/s, latencies in s) of ``concurrency`` contexts in this process."""
    url = normalize_url(settings.url, "grpc")
    outputs = tuple(dict.fromkeys(("FACE_COUNT", *settings.outputs)))
    transport = Transport("grpc", url, concurrency, settings.timeout)
    try:
        contract = read_contract(transport, settings.model, url, outputs)
        slots = open_slots(transport, url, settings.shared_memory, len(frames) + concurrency,
                           settings.gpu)  # fmt: skip
        try:
            return asyncio.run(_load(settings, contract, slots, frames, outputs, concurrency))
        finally:
            close_slots(slots, settings.timeout)
    finally:
        transport.close()


async def _load(settings, contract, slots, frames, outputs, concurrency):
    import tritonclient.grpc as grpc_module
    import tritonclient.grpc.aio as aio

    batch = (1,) if contract.batched else ()
    in_response = [n for n in outputs if n not in REGION_OUTPUTS]
    inputs = []
    for index, frame in enumerate(frames):
        tensor = grpc_module.InferInput(INPUT, [*batch, *frame.shape], "UINT8")
        if slots:
            name = slots[index].ensure("input", frame.nbytes)
            slots[index].write(frame)  # once: every context reads it from there
            tensor.set_shared_memory(name, frame.nbytes)
        else:
            tensor.set_data_from_numpy(frame.reshape(*batch, *frame.shape))
        inputs.append(tensor)

    def requested(context: int) -> list:
        result = [grpc_module.InferRequestedOutput(name) for name in outputs]
        if slots:
            layout, total = output_layout(contract, outputs, frames[0].shape,
                                          settings.shared_memory == "cuda", {}, in_response)  # fmt: skip
            region = slots[len(frames) + context]
            out_name = region.ensure("output", total)
            for item in result:
                if item.name() in layout:
                    offset, size = layout[item.name()]
                    item.set_shared_memory(out_name, size, offset=offset)
        return result

    warmup = max(settings.measurement_ms / 2000, 1.0)
    measure_s = settings.measurement_ms / 1000
    start = time.monotonic()
    window = (start + warmup, start + warmup + measure_s)
    latencies: list[float] = []
    keepalive = aio.KeepAliveOptions(**GRPC_KEEPALIVE)
    async with aio.InferenceServerClient(
        normalize_url(settings.url, "grpc"), keepalive_options=keepalive
    ) as client:

        async def context(number: int) -> None:
            outs = requested(number)
            length = settings.sequence_length
            step, sequence_id = (0 if length else number), 0
            # a sequence begun is finished (END sent), so the server frees it at once
            while time.monotonic() < window[1] or (length and step % length):
                extra = {}
                if length:
                    position = step % length
                    if position == 0:
                        sequence_id = new_sequence_id()
                    extra = {"sequence_id": sequence_id, "sequence_start": position == 0,
                             "sequence_end": position == length - 1}  # fmt: skip
                    frame = position % len(frames)
                else:
                    frame = step % len(frames)
                sent = time.monotonic()
                try:
                    await client.infer(settings.model, [inputs[frame]], outputs=outs,
                                       client_timeout=settings.timeout, **extra)  # fmt: skip
                except Exception as exc:
                    raise translate_error(exc) from exc
                done = time.monotonic()
                if window[0] <= sent and done <= window[1]:
                    latencies.append(done - sent)
                step += 1

        await asyncio.gather(*(context(i) for i in range(concurrency)))
    return len(latencies) / measure_s, np.asarray(latencies)
