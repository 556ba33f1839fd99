"""NVDEC and NVENC through PyNvVideoCodec (2.2.4: SimpleDecoder, CreateEncoder).

Decoded frames stay on the GPU: :class:`NvDecoder` yields CuPy views of the decoder's own
output surfaces, which it REUSES: a frame is valid only until the next one is pulled (frames
held across iterations were overwritten on an H200, 27-35 grey levels off). Its consumer
copies each frame before asking for the next: ``FrameClient.infer_stream`` and the stream
client (tddfa_clients.video_streams) write it into a CUDA shared memory slot (device to
device) before pulling again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tddfa_clients.video_io import Decoder, Frame, VideoError, have_pyav

LOG = logging.getLogger(__name__)


def _cupy_frame(frame: Any) -> Any:
    """A CuPy view of a decoded frame (DLPack; the CUDA array interface as the fallback)."""
    import cupy

    try:
        return cupy.from_dlpack(frame)
    except (TypeError, BufferError):
        return cupy.asarray(frame)


class NvDecoder(Decoder):
    """NVDEC decoding through PyNvVideoCodec's SimpleDecoder; frames are (H, W, 3) uint8 RGB
    CuPy arrays on GPU ``gpu_id``, valid until the next frame is pulled (see the module doc).

    The decoder works on this object's own CUDA stream (:attr:`stream`, a blocking stream:
    work that the decoding library leaves on the legacy default stream is ordered before it
    too). Each frame is complete when it is yielded: one event recorded on that stream is
    waited for with blocking synchronisation (the thread sleeps; no device-wide
    synchronisation and no spinning, which cost a core per decoding process). A consumer
    that does its own work on :attr:`stream` sets ``wait_each_frame = False`` and waits once,
    after that work (tddfa_clients.video_streams copies each frame into shared memory so).

    Timestamps: the container's packet pts (PyAV demux, no decoding) when PyAV is installed,
    else the frame index (``VideoInfo.time_base`` is then one frame).
    """

    name = "nvdec (PyNvVideoCodec)"
    on_device = True

    def __init__(self, path: str | Path, gpu_id: int = 0, batch: int = 1):
        super().__init__(path)
        import cupy
        import PyNvVideoCodec as nvc

        self.gpu_id = gpu_id
        self.wait_each_frame = True
        self._batch = max(1, int(batch))
        self._device = cupy.cuda.Device(gpu_id)
        with self._device:
            self.stream = cupy.cuda.Stream(non_blocking=False)
            self._decoded = cupy.cuda.Event(block=True, disable_timing=True)
            context = cupy.cuda.driver.ctxGetCurrent()  # the primary context CuPy uses
        self._decoder = nvc.SimpleDecoder(
            str(self.path),
            gpu_id=gpu_id,
            cuda_context=context,
            cuda_stream=self.stream.ptr,
            use_device_memory=True,
            output_color_type=nvc.OutputColorType.RGB,
        )
        if have_pyav():
            from tddfa_clients.video_pyav import packet_pts

            self._pts = packet_pts(self.path)
        else:
            self._pts = []

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while self._decoder is not None:
            frames = self._decoder.get_batch_frames(self._batch)
            if not frames:
                break
            with self._device, self.stream:
                images = [_cupy_frame(frame) for frame in frames]
                if self.wait_each_frame:
                    self._decoded.record(self.stream)
                    self._decoded.synchronize()
            for image in images:
                if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                    raise VideoError(
                        f"{self.path}: NVDEC gave a {image.dtype} {tuple(image.shape)} frame, "
                        "expected uint8 (H, W, 3) RGB (output_color_type=RGB)"
                    )
                pts = self._pts[index] if index < len(self._pts) else index
                if not self.info.orientation.is_identity:  # turned on the device (one copy)
                    with self._device, self.stream:
                        image = self.info.orientation.apply(image)
                yield Frame(image, int(pts), index)
                index += 1
        if index == 0:
            raise VideoError(f"{self.path}: NVDEC decoded no frame")

    def close(self) -> None:
        self._decoder = None
