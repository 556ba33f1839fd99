"""Benchmark (c) of gpu_bench.py: N parallel copies of the sample video through the server.

Each copy (a thread; decoding and gRPC release the GIL) decodes with OpenCV/FFmpeg on the
CPU, uploads each frame into a CUDA shared memory input region, sends it, and leaves
RENDERED in a CUDA shared memory output region (no encode: the H100/H200 have no NVENC).

Region life cycle: a slot's regions are reused from frame to frame and unregistered only
once their request has come back. A request that does not come back within ``timeout`` is
reported as an error with the number of requests the server still holds, and its regions
stay registered: unregistering them is refused by Triton while a request uses them ("Cannot
unregister shared memory region ..., it is currently in use"), and freeing them could let the
server write into freed memory. (Before 2026-11-30 this benchmark unregistered after a
30-second wait regardless, which produced that message on two H200s.)
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import queue
import statistics
import threading
import time
import uuid
from pathlib import Path

LOG = logging.getLogger("benchmarks.gpu.video")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a copy sends its frames: the server, the GPU its regions live on (this
    process's numbering) and that GPU's number in the server (``tddfa serve --gpus N``
    renumbers its one GPU to 0)."""

    url: str
    device: int = 0
    server_device: int = 0


class CudaRegion:
    """cudaMalloc'd device memory registered with the server as CUDA shared memory."""

    def __init__(self, client, nbytes: int, device: int = 0, server_device: int | None = None):
        import cupy

        self.cupy, self.client, self.device = cupy, client, device
        self.name = f"tddfa_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with cupy.cuda.Device(device):
            self.memory = cupy.cuda.Memory(nbytes)
            handle = cupy.cuda.runtime.ipcGetMemHandle(self.memory.ptr)
        server_device = device if server_device is None else server_device
        client.register_cuda_shared_memory(
            self.name, base64.b64encode(handle), server_device, nbytes
        )

    def view(self, shape, dtype):
        return self.cupy.ndarray(shape, dtype, self.cupy.cuda.MemoryPointer(self.memory, 0))

    def close(self) -> None:
        """Unregister; call only when no request uses the region."""
        self.client.unregister_cuda_shared_memory(self.name)


def video_copy(index, target: Target, video, in_flight, barrier, results, timeout) -> None:
    """One copy, in its own thread; puts (index, frames, start, end, errors, 1-face frames)."""
    try:
        _video_copy(index, target, video, in_flight, barrier, results, timeout)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the others go on
        barrier.abort()
        results.put((index, 0, 0.0, 1e-9, [f"{type(exc).__name__}: {exc}"], 0))


def _video_copy(index, target: Target, video, in_flight, barrier, results, timeout) -> None:
    """Decode -> device -> CUDA shm -> ensemble (RENDERED stays in CUDA shm)."""
    import cupy
    import cv2
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(target.url)
    capture = cv2.VideoCapture(video)
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    nbytes = height * width * 3
    slots = [
        tuple(CudaRegion(client, nbytes, target.device, target.server_device) for _ in range(2))
        for _ in range(in_flight)
    ]
    free = list(range(in_flight))
    cond = threading.Condition()
    errors, faces = [], []
    with cupy.cuda.Device(target.device):
        stream = cupy.cuda.Stream(non_blocking=True)  # this copy's uploads, apart from others

    def done(slot, result, error):
        with cond:  # always free the slot: an exception here would hang the copy
            try:
                if error is not None:
                    errors.append(str(error))
                else:
                    faces.append(int(result.as_numpy("FACE_COUNT").reshape(-1)[0]))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                free.append(slot)
                cond.notify()

    frames = 0
    barrier.wait(timeout=120)
    start = time.perf_counter()
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        with cond:
            if not cond.wait_for(lambda: free, timeout=timeout):
                errors.append(f"no response for {timeout:.0f} s after {frames} frames")
                break
            slot = free.pop()
        source, output = slots[slot]
        with cupy.cuda.Device(target.device), stream:
            source.view((height, width, 3), cupy.uint8)[...] = cupy.asarray(bgr)[:, :, ::-1]
        stream.synchronize()
        tensor = grpcclient.InferInput("IMAGE", [1, height, width, 3], "UINT8")
        tensor.set_shared_memory(source.name, nbytes)
        rendered = grpcclient.InferRequestedOutput("RENDERED")
        rendered.set_shared_memory(output.name, nbytes)
        outputs = [rendered, grpcclient.InferRequestedOutput("FACE_COUNT")]
        client.async_infer(
            "tddfa", [tensor], lambda result, error, s=slot: done(s, result, error), outputs=outputs
        )
        frames += 1
    with cond:
        cond.wait_for(lambda: len(free) == in_flight, timeout=timeout)
        idle = set(free)
    end = time.perf_counter()
    stuck = in_flight - len(idle)
    if stuck:
        errors.append(
            f"{stuck} request(s) did not come back within {timeout:.0f} s: the server holds "
            "them; their regions stay registered"
        )
    for slot, pair in enumerate(slots):
        if slot in idle:
            for region in pair:
                region.close()
    client.close()
    results.put((index, frames, start, end, errors[:3], sum(1 for f in faces if f == 1)))


def video_copies(
    targets: list[Target], video: Path, copies: int, in_flight: int, timeout: float
) -> dict:
    """``copies`` clients in threads of this process, copy i against ``targets[i % n]``,
    all started together; aggregate frames/s = all frames / (last end - first start)."""
    barrier, results = threading.Barrier(copies), queue.Queue()
    workers = [
        threading.Thread(
            target=video_copy,
            args=(i, targets[i % len(targets)], str(video), in_flight, barrier, results, timeout),
            daemon=True,
        )
        for i in range(copies)
    ]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 4 * timeout + 120
    for w in workers:
        w.join(timeout=max(1.0, deadline - time.monotonic()))
    got = [results.get_nowait() for _ in range(results.qsize())]
    if len(got) < copies:
        raise RuntimeError(f"{copies} copies: only {len(got)} finished in time")
    frames = sum(g[1] for g in got)
    ok = [g for g in got if g[1]] or got
    wall = max(g[3] for g in ok) - min(g[2] for g in ok)
    errors = [e for g in got for e in g[4]]
    return {"copies": copies, "frames": frames, "wall_s": wall, "fps": frames / wall,
            "per_copy_fps": statistics.median(g[1] / (g[3] - g[2]) for g in ok),
            "one_face_frames": sum(g[5] for g in got), "errors": errors[:3],
            "failed_copies": sum(1 for g in got if g[4])}  # fmt: skip


def decode_only_fps(video: Path) -> float:
    import cv2

    capture = cv2.VideoCapture(str(video))
    count, start = 0, time.perf_counter()
    while capture.read()[0]:
        count += 1
    return count / (time.perf_counter() - start)
