"""NVDEC and NVENC through PyNvVideoCodec (2.2.4: SimpleDecoder, CreateEncoder).

Decoded frames stay on the GPU: :class:`NvDecoder` yields CuPy views of the decoder's own
output surfaces, which it REUSES: a frame is valid only until the next one is pulled (frames
held across iterations were overwritten on an H200, 27-35 grey levels off). Its consumer
copies each frame before asking for the next: ``FrameClient.infer_stream`` writes it into
its CUDA shared memory slot (device to device, complete on return) before pulling again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tddfa_clients.video_io import Decoder, Frame, VideoError, VideoInfo, have_pyav
from tddfa_clients.video_pyav import PyAVMuxingEncoder

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

    After each batch the device is synchronised (this process's work only), so the frames
    are complete whatever stream the decoder converted them on; the copy that consumes a
    frame then needs no knowledge of the decoder's stream.

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
        self._batch = max(1, int(batch))
        self._device = cupy.cuda.Device(gpu_id)
        self._decoder = nvc.SimpleDecoder(
            str(self.path),
            gpu_id=gpu_id,
            use_device_memory=True,
            output_color_type=nvc.OutputColorType.RGB,
        )
        if have_pyav():
            from tddfa_clients.video_pyav import packet_pts

            self._pts = packet_pts(self.path)
        else:
            self._pts = []

    def __iter__(self) -> Iterator[Frame]:
        import cupy

        index = 0
        while self._decoder is not None:
            frames = self._decoder.get_batch_frames(self._batch)
            if not frames:
                break
            with self._device:
                cupy.cuda.runtime.deviceSynchronize()
                images = [_cupy_frame(frame) for frame in frames]
            for image in images:
                if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                    raise VideoError(
                        f"{self.path}: NVDEC gave a {image.dtype} {tuple(image.shape)} frame, "
                        "expected uint8 (H, W, 3) RGB (output_color_type=RGB)"
                    )
                pts = self._pts[index] if index < len(self._pts) else index
                if not self.info.orientation.is_identity:  # turned on the device (one copy)
                    with self._device:
                        image = self.info.orientation.apply(image)
                yield Frame(image, int(pts), index)
                index += 1
        if index == 0:
            raise VideoError(f"{self.path}: NVDEC decoded no frame")

    def close(self) -> None:
        self._decoder = None


def _bitstream(packets: Any) -> bytes:
    """Encode/EndEncode output as bytes: PyNvVideoCodec 2.2 returns a list of dicts
    (``data``, ``timestamp``, ``picture_type``); older releases returned the bytes."""
    if isinstance(packets, (list, tuple)):
        return b"".join(bytes(p["data"]) if isinstance(p, dict) else bytes(p) for p in packets)
    return bytes(packets)


class NvEncoder(PyAVMuxingEncoder):
    """NVENC H.264 through PyNvVideoCodec, muxed with PyAV (audio copied).

    Frames are taken on the GPU (CuPy; no host copy: NVENC reads an ARGB device buffer) or
    as numpy (copied to the device once). The constructor raises when the GPU has no NVENC
    (H100, H200, A100): that is how ``open_encoder`` detects it.
    """

    name = "nvenc (PyNvVideoCodec)"
    on_device = True

    def __init__(
        self,
        path: str | Path,
        info: VideoInfo,
        audio_from: str | Path | None = None,
        gpu_id: int = 0,
    ):
        import av
        import PyNvVideoCodec as nvc

        fps = float(info.average_rate)
        # False: device input buffers (an object with __cuda_array_interface__)
        self._nvenc = nvc.CreateEncoder(
            info.width, info.height, "ARGB", False, codec="h264", fps=f"{fps:g}", gpu_id=gpu_id
        )
        self.gpu_id = gpu_id
        super().__init__(path, info, audio_from)
        stream = self._container.add_stream("h264", rate=info.average_rate)
        stream.width, stream.height = info.width, info.height
        stream.time_base = info.time_base
        self._stream = stream
        self._add_audio()
        self._parser = av.CodecContext.create("h264", "r")
        self._pending_pts: list[int] = []
        self._argb: Any = None  # (H, W, 4) device buffer, reused

    def write(self, image: Any, pts: int) -> None:
        import cupy

        with cupy.cuda.Device(self.gpu_id):
            if isinstance(image, np.ndarray):
                image = cupy.asarray(image)
            elif not isinstance(image, cupy.ndarray):
                image = cupy.from_dlpack(image)
            height, width = image.shape[:2]
            if self._argb is None or self._argb.shape[:2] != (height, width):
                self._argb = cupy.full((height, width, 4), 255, dtype=cupy.uint8)
            # NVENC "ARGB" is a little-endian 32-bit word: bytes B, G, R, A in memory.
            self._argb[..., :3] = image[..., ::-1]
            cupy.cuda.get_current_stream().synchronize()
            self._pending_pts.append(pts)
            self._mux_bitstream(_bitstream(self._nvenc.Encode(self._argb)))
        self.frames_written += 1

    def _mux_bitstream(self, bitstream: bytes) -> None:
        packets = []
        for packet in self._parser.parse(bitstream):
            # NVENC's default preset emits no B-frames: packets come out in display order
            pts = self._pending_pts.pop(0) if self._pending_pts else None
            packet.pts = packet.dts = pts
            packet.time_base = self.info.time_base
            packet.stream = self._stream
            packets.append(packet)
        self._mux_video(packets)

    def _flush(self) -> None:
        self._mux_bitstream(_bitstream(self._nvenc.EndEncode()))
        self._mux_bitstream(b"")  # drain the parser
