"""PyAV (FFmpeg, CPU): probe, decode, libx264 encode, and the muxing (with the input's audio
copied packet by packet) that the NVENC encoder shares."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from tddfa_clients.orientation import IDENTITY, Orientation, frame_orientation
from tddfa_clients.video_io import (
    Decoder,
    Encoder,
    Frame,
    VideoError,
    VideoInfo,
    host_array,
    reason,
)

LOG = logging.getLogger(__name__)


def probe_pyav(path: str | Path) -> VideoInfo:
    try:
        with av.open(str(path)) as container:
            return _info(container)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: cannot open as a video ({reason(exc)})") from exc


def _info(container: av.container.InputContainer) -> VideoInfo:
    if not container.streams.video:
        raise VideoError(f"{container.name}: no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if not ctx.width or not ctx.height:
        raise VideoError(f"{container.name}: video stream has no frame size (unsupported codec?)")
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    orientation = first_frame_orientation(container)
    width, height = orientation.display_size(ctx.width, ctx.height)
    return VideoInfo(
        width=width,
        height=height,
        frame_count=int(stream.frames or 0),
        average_rate=Fraction(rate),
        time_base=Fraction(stream.time_base),
        codec=ctx.name,
        has_audio=bool(container.streams.audio),
        orientation=orientation,
    )


def first_frame_orientation(container: av.container.InputContainer) -> Orientation:
    """The display matrix, read from the first decoded frame (PyAV exposes it on frames,
    where FFmpeg copies the stream's side data); identity when nothing decodes here (the
    decoder then reports the problem with its frame number)."""
    try:
        for frame in container.decode(video=0):
            orientation = frame_orientation(frame)
            if not orientation.is_identity:
                LOG.info("%s: %s by its metadata", container.name, orientation.describe())
            return orientation
    except (av.FFmpegError, ValueError):
        pass
    return IDENTITY


def packet_pts(path: Path) -> list[int]:
    """The video packets' presentation timestamps, sorted: the frames' pts in display
    order (demuxing only, no decoding)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(p.pts for p in container.demux(stream) if p.pts is not None)


class PyAVDecoder(Decoder):
    """FFmpeg software decoding through PyAV; frames are numpy RGB."""

    name = "cpu (PyAV)"

    def __init__(self, path: str | Path, threads: int = 0):
        super().__init__(path)
        self._container = av.open(str(self.path))
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        turn = self.info.orientation.apply  # frames in display orientation
        try:
            for frame in self._container.decode(video=0):
                yield Frame(turn(frame.to_ndarray(format="rgb24")), int(frame.pts or 0), index)
                index += 1
        except av.FFmpegError as exc:
            raise VideoError(
                f"{self.path}: decoding failed at frame {index}: {reason(exc)}"
            ) from exc
        if index == 0:
            raise VideoError(f"{self.path}: the video stream holds no decodable frame")

    def close(self) -> None:
        self._container.close()


def _format_for(path: Path) -> str | None:
    # temporary names like out.mp4.part-1234 still get the real container format
    for suffix in reversed(path.suffixes):
        name = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(suffix)
        if name:
            return name
    return None


class PyAVMuxingEncoder(Encoder):
    """An encoder whose packets PyAV muxes into ``path``, with the audio of ``audio_from``
    copied packet by packet and interleaved with the video as it is written."""

    def __init__(self, path: str | Path, info: VideoInfo, audio_from: str | Path | None = None):
        super().__init__(path, info)
        self._container = av.open(str(self.path), mode="w", format=_format_for(self.path))
        self._audio_from = audio_from
        self._audio: _AudioCopier | None = None

    def _add_audio(self) -> None:
        """Add the copied audio stream; subclasses call this after adding the video stream."""
        if self._audio_from is not None:
            self._audio = _AudioCopier(self._container, self._audio_from)

    def _flush(self) -> None:
        raise NotImplementedError

    def _mux_video(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            if self._audio is not None and packet.pts is not None:
                self._audio.copy_until(float(packet.pts * packet.time_base))
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder, copy the remaining audio and finish the container."""
        if self._container is None:
            return
        self._flush()
        if self._audio is not None:
            self._audio.copy_until(None)
            self._audio.close()
        self._container.close()
        self._container = None

    def abort(self) -> None:
        """Close without flushing (the file is incomplete; the caller removes it)."""
        if self._audio is not None:
            self._audio.close()
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, OSError, ValueError):
                LOG.debug("error while aborting %s", self.path, exc_info=True)
            self._container = None


class PyAVEncoder(PyAVMuxingEncoder):
    """libx264 (CPU) through PyAV, the input's time base, frame rate and exact size:
    yuv420p (plays everywhere) for even sizes, yuv444p for odd ones (4:2:0 cannot code an
    odd width or height; H.264 High 4:4:4 keeps it, though some players, browsers and
    QuickTime among them, cannot play that profile). CUDA images are copied to the host
    first."""

    name = "cpu (PyAV libx264)"

    def __init__(
        self,
        path: str | Path,
        info: VideoInfo,
        audio_from: str | Path | None = None,
        crf: int = 20,
        preset: str = "veryfast",
    ):
        super().__init__(path, info, audio_from)
        stream = self._container.add_stream(
            "libx264", rate=info.average_rate, options={"crf": str(crf), "preset": preset}
        )
        stream.width, stream.height = info.width, info.height
        stream.pix_fmt = "yuv444p" if info.odd_size else "yuv420p"
        if info.odd_size:
            LOG.warning(
                "%dx%d is an odd size: encoding H.264 4:4:4 to keep it exactly (4:2:0 needs "
                "even sizes); some players (browsers, QuickTime) cannot play 4:4:4",
                info.width,
                info.height,
            )
        stream.time_base = info.time_base
        stream.codec_context.time_base = info.time_base
        self._stream = stream
        self._add_audio()

    def write(self, image: Any, pts: int) -> None:
        # a frame over the image's own memory, no copy: encode() converts it to the stream's
        # YUV (a new frame, which libx264 copies) before it returns, so the caller may reuse
        # the image (a shared memory slot) as soon as write returns
        frame = av.VideoFrame.from_numpy_buffer(host_array(image), format="rgb24")
        frame.pts = pts
        frame.time_base = self.info.time_base
        self._mux_video(self._stream.encode(frame))
        self.frames_written += 1

    def _flush(self) -> None:
        self._mux_video(self._stream.encode(None))


class _AudioCopier:
    """Copy the first audio stream of ``source`` into ``output`` packet by packet."""

    def __init__(self, output: av.container.OutputContainer, source: str | Path):
        self._input = av.open(str(source))
        self._packets: Iterator[av.Packet] | None = None
        self._held: av.Packet | None = None
        if self._input.streams.audio:
            in_stream = self._input.streams.audio[0]
            self._stream = output.add_stream_from_template(in_stream)
            self._packets = iter(self._input.demux(in_stream))
        self._output = output

    def copy_until(self, seconds: float | None) -> None:
        """Mux audio packets that start before ``seconds`` (all when None)."""
        while self._packets is not None:
            packet = self._held or next(self._packets, None)
            self._held = None
            if packet is None:
                self._packets = None
                return
            if packet.dts is None:  # the demuxer's flush packet
                continue
            if seconds is not None and float(packet.pts * packet.time_base) > seconds:
                self._held = packet
                return
            packet.stream = self._stream
            self._output.mux(packet)

    def close(self) -> None:
        self._packets = None
        self._held = None
        self._input.close()
