"""NVENC encoding through PyNvVideoCodec, muxed by PyAV (this module needs both; the
decoder side, tddfa_clients.video_nvidia, works without PyAV)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tddfa_clients.video_io import VideoInfo
from tddfa_clients.video_pyav import PyAVMuxingEncoder

LOG = logging.getLogger(__name__)


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
