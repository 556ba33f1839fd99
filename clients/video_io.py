"""Video decode and encode for the clients: PyAV on the CPU, PyNvVideoCodec on NVIDIA GPUs.

Decoders yield :class:`Frame` objects (an RGB image plus its presentation timestamp);
encoders take the rendered images back with the same timestamps, so the output keeps the
input's frame count, frame rate and timing. The audio stream of the input is copied
packet by packet (no re-encoding) and interleaved with the video as it is written.

Choosing an implementation (``open_decoder`` / ``open_encoder``):

* decoder ``auto``: NVDEC through PyNvVideoCodec when it imports and a GPU is usable,
  else PyAV (FFmpeg, CPU).
* encoder ``auto``: NVENC through PyNvVideoCodec when an encoder can be created (the
  only reliable test: H100, H200 and A100 have no NVENC), else PyAV/libx264 with one
  notice in the log.

The NVIDIA classes keep their GPU specifics (device arrays, NVENC bitstreams) inside
this module; the rest of the client sees the same interface for both.

Orientation and size: decoders hand out frames in *display* orientation (the stream's
display matrix applied, :mod:`tddfa_clients.orientation`), and :class:`VideoInfo` gives the
display size, so results are where a viewer sees them and the output plays upright. Odd
sizes are kept exactly: 4:2:0 H.264 cannot code them (its cropping works in 2-pixel
units), so an odd-sized output is coded 4:4:4 (H.264 High 4:4:4 Predictive), with a notice.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from tddfa_clients.orientation import IDENTITY, Orientation, frame_orientation

LOG = logging.getLogger(__name__)

DECODERS = ("auto", "nvdec", "cpu")
OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")  # containers H.264 + copied audio go into
ENCODERS = ("auto", "nvenc", "cpu")


class VideoError(RuntimeError):
    """The input is not a decodable video (corrupt, empty, unsupported codec...)."""


class CodecUnavailable(VideoError):
    """A requested decoder or encoder (NVDEC, NVENC) cannot be used on this machine."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the encoder needs to reproduce the input's timing and geometry.

    ``width`` x ``height`` is the *display* size (the stored size turned by
    ``orientation``): the size of the frames the decoders yield and the output has.
    """

    width: int
    height: int
    frame_count: int  # from the container header; 0 when unknown
    average_rate: Fraction  # frames per second
    time_base: Fraction  # unit of Frame.pts
    codec: str
    has_audio: bool
    orientation: Orientation = IDENTITY

    @property
    def odd_size(self) -> bool:
        return bool(self.width % 2 or self.height % 2)


@dataclasses.dataclass
class Frame:
    """One decoded frame.

    image: (H, W, 3) uint8 RGB; a numpy array (CPU decoders) or a device array that
    supports DLPack (NVDEC). ``host_image()`` gives numpy in both cases.
    pts: presentation timestamp in ``VideoInfo.time_base`` units.
    """

    image: Any
    pts: int
    index: int

    def host_image(self) -> np.ndarray:
        """The image as a C-contiguous numpy (H, W, 3) uint8 array."""
        if isinstance(self.image, np.ndarray):
            return np.ascontiguousarray(self.image)
        import cupy  # only device arrays reach this line, so CuPy is there

        return cupy.asnumpy(cupy.from_dlpack(self.image))


def probe(path: str | Path) -> VideoInfo:
    """Read the video stream's geometry and timing; raises VideoError on a bad file."""
    try:
        with av.open(str(path)) as container:
            return _info(container)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: cannot open as a video ({_reason(exc)})") from exc


def _info(container: av.container.InputContainer) -> VideoInfo:
    if not container.streams.video:
        raise VideoError(f"{container.name}: no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if not ctx.width or not ctx.height:
        raise VideoError(f"{container.name}: video stream has no frame size (unsupported codec?)")
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    orientation = _first_frame_orientation(container)
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


def _first_frame_orientation(container: av.container.InputContainer) -> Orientation:
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


def _reason(exc: BaseException) -> str:
    """One line describing ``exc`` without repeating the file name."""
    strerror = getattr(exc, "strerror", None)  # OSError and av.FFmpegError
    if strerror:
        return str(strerror)
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------
# Decoders


class Decoder(abc.ABC):
    """Iterate over the frames of a video file in presentation order."""

    name = "decoder"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.info = probe(self.path)

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Frame]: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Release the decoder's resources (idempotent)."""

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        try:
            turn = self.info.orientation.apply
            for frame in self._container.decode(video=0):
                yield Frame(turn(frame.to_ndarray(format="rgb24")), int(frame.pts or 0), index)
                index += 1
        except av.FFmpegError as exc:
            raise VideoError(
                f"{self.path}: decoding failed at frame {index}: {_reason(exc)}"
            ) from exc
        if index == 0:
            raise VideoError(f"{self.path}: the video stream holds no decodable frame")

    def close(self) -> None:
        self._container.close()


class NvDecoder(Decoder):
    """NVDEC decoding through PyNvVideoCodec; frames stay on the GPU (DLPack, RGB).

    Timestamps come from demuxing the container with PyAV (cheap, no decoding): the
    sorted packet pts are the frames' presentation times.
    """

    name = "nvdec (PyNvVideoCodec)"

    def __init__(self, path: str | Path, gpu_id: int = 0):
        super().__init__(path)
        import PyNvVideoCodec as nvc

        self._decoder = nvc.SimpleDecoder(
            str(self.path),
            gpu_id=gpu_id,
            use_device_memory=True,
            output_color_type=nvc.OutputColorType.RGB,
        )
        self._pts = _packet_pts(self.path)

    def __iter__(self) -> Iterator[Frame]:
        orientation = self.info.orientation
        for index, frame in enumerate(self._decoder):
            pts = self._pts[index] if index < len(self._pts) else index
            if not orientation.is_identity:  # turned on the device (CuPy views + one copy)
                import cupy

                frame = orientation.apply(cupy.from_dlpack(frame))
            yield Frame(frame, int(pts), index)

    def close(self) -> None:
        self._decoder = None


def _packet_pts(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(p.pts for p in container.demux(stream) if p.pts is not None)


def nvidia_codec_available() -> bool:
    """True when PyNvVideoCodec imports (a GPU may still be missing)."""
    try:
        import PyNvVideoCodec  # noqa: F401
    except ImportError:
        return False
    return True


def require_codecs(decoder: str, encoder: str) -> None:
    """CodecUnavailable at once when ``nvdec``/``nvenc`` is forced and PyNvVideoCodec is not
    installed (checked before any server is asked; a missing GPU shows when it opens)."""
    forced = [
        (name, option)
        for name, option, wanted in (
            ("NVDEC", "--decoder", decoder == "nvdec"),
            ("NVENC", "--encoder", encoder == "nvenc"),
        )
        if wanted
    ]
    if forced and not nvidia_codec_available():
        raise CodecUnavailable(
            f"{' and '.join(n for n, _ in forced)} requested but PyNvVideoCodec is not "
            "installed (it needs an NVIDIA GPU and driver): use "
            + " and ".join(f"{option} cpu (or auto)" for _, option in forced)
        )


def open_decoder(path: str | Path, kind: str = "auto") -> Decoder:
    """A decoder for ``path``: ``nvdec``, ``cpu`` or ``auto`` (NVDEC when usable)."""
    if kind not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {kind!r}")
    if kind == "cpu" or (kind == "auto" and not nvidia_codec_available()):
        return PyAVDecoder(path)
    if not nvidia_codec_available():
        raise CodecUnavailable(
            "NVDEC requested but PyNvVideoCodec is not installed (pip install "
            "PyNvVideoCodec on a machine with an NVIDIA GPU): use --decoder cpu or auto"
        )
    try:
        return NvDecoder(path)
    except VideoError:
        raise
    except Exception as exc:  # no GPU, driver or codec support: fall back unless forced
        if kind == "nvdec":
            raise CodecUnavailable(
                f"NVDEC decoder unavailable ({_reason(exc)}): use --decoder cpu or auto"
            ) from exc
        LOG.info("NVDEC unavailable (%s); decoding on the CPU with PyAV", _reason(exc))
        return PyAVDecoder(path)


# ---------------------------------------------------------------------------------------
# Encoders


class Encoder(abc.ABC):
    """Write RGB frames with their timestamps to ``path``; copy audio from ``audio_from``.

    ``close()`` finishes the file; ``abort()`` stops without finishing it (the caller
    deletes the partial file). Used as a context manager, an exception aborts.
    """

    name = "encoder"

    def __init__(self, path: str | Path, info: VideoInfo, audio_from: str | Path | None = None):
        self.path = Path(path)
        self.info = info
        self.frames_written = 0
        self._container = av.open(str(self.path), mode="w", format=_format_for(self.path))
        self._audio_from = audio_from
        self._audio: _AudioCopier | None = None

    def _add_audio(self) -> None:
        """Add the copied audio stream; subclasses call this after adding the video stream."""
        if self._audio_from is not None:
            self._audio = _AudioCopier(self._container, self._audio_from)

    @abc.abstractmethod
    def write(self, image: Any, pts: int) -> None:
        """Encode one (H, W, 3) uint8 RGB frame at ``pts`` (input time_base units)."""

    @abc.abstractmethod
    def _flush(self) -> None: ...

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

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _format_for(path: Path) -> str | None:
    # temporary names like out.mp4.part-1234 still get the real container format
    for suffix in reversed(path.suffixes):
        name = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(suffix)
        if name:
            return name
    return None


class PyAVEncoder(Encoder):
    """libx264 (CPU) through PyAV, the input's time base, frame rate and exact size:
    yuv420p (plays everywhere) for even sizes, yuv444p for odd ones (4:2:0 cannot code an
    odd width or height; H.264 High 4:4:4 keeps it, though some players, browsers and
    QuickTime among them, cannot play that profile)."""

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
        if not isinstance(image, np.ndarray):
            image = Frame(image, pts, 0).host_image()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = pts
        frame.time_base = self.info.time_base
        self._mux_video(self._stream.encode(frame))
        self.frames_written += 1

    def _flush(self) -> None:
        self._mux_video(self._stream.encode(None))


class NvEncoder(Encoder):
    """NVENC H.264 through PyNvVideoCodec (host ARGB input), muxed with PyAV.

    The constructor raises when the GPU has no NVENC (H100, H200, A100): that is how
    ``open_encoder`` detects it.
    """

    name = "nvenc (PyNvVideoCodec)"

    def __init__(
        self,
        path: str | Path,
        info: VideoInfo,
        audio_from: str | Path | None = None,
        gpu_id: int = 0,
    ):
        import PyNvVideoCodec as nvc

        fps = float(info.average_rate)
        self._nvenc = nvc.CreateEncoder(
            info.width, info.height, "ARGB", True, codec="h264", fps=f"{fps:g}", gpuid=gpu_id
        )
        super().__init__(path, info, audio_from)
        stream = self._container.add_stream("h264", rate=info.average_rate)
        stream.width, stream.height = info.width, info.height
        stream.time_base = info.time_base
        self._stream = stream
        self._add_audio()
        self._parser = av.CodecContext.create("h264", "r")
        self._pending_pts: list[int] = []

    def write(self, image: Any, pts: int) -> None:
        if not isinstance(image, np.ndarray):
            image = Frame(image, pts, 0).host_image()
        # NVENC "ARGB" is a little-endian 32-bit word: bytes B, G, R, A in memory.
        bgra = np.empty((*image.shape[:2], 4), np.uint8)
        bgra[..., :3] = image[..., ::-1]
        bgra[..., 3] = 255
        self._pending_pts.append(pts)
        self._mux_bitstream(self._nvenc.Encode(bgra))
        self.frames_written += 1

    def _mux_bitstream(self, bitstream: bytes) -> None:
        packets = []
        for packet in self._parser.parse(bytes(bitstream)):
            # NVENC's default preset emits no B-frames: packets come out in display order
            pts = self._pending_pts.pop(0) if self._pending_pts else None
            packet.pts = packet.dts = pts
            packet.time_base = self.info.time_base
            packet.stream = self._stream
            packets.append(packet)
        self._mux_video(packets)

    def _flush(self) -> None:
        self._mux_bitstream(self._nvenc.EndEncode())
        self._mux_bitstream(b"")  # drain the parser


def open_encoder(
    path: str | Path, info: VideoInfo, kind: str = "auto", audio_from: str | Path | None = None
) -> Encoder:
    """An encoder for ``path``: ``nvenc``, ``cpu`` or ``auto`` (NVENC when the GPU has one)."""
    if kind not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {kind!r}")
    if kind == "cpu":
        return PyAVEncoder(path, info, audio_from)
    if not nvidia_codec_available():
        if kind == "nvenc":
            raise CodecUnavailable(
                "NVENC requested but PyNvVideoCodec is not installed (pip install "
                "PyNvVideoCodec on a machine with an NVENC GPU): use --encoder cpu or auto"
            )
        return PyAVEncoder(path, info, audio_from)
    if info.odd_size:  # NVENC is 4:2:0 only
        if kind == "nvenc":
            raise CodecUnavailable(
                f"NVENC codes 4:2:0 only, which needs even sizes; this video is "
                f"{info.width}x{info.height}: use --encoder cpu (libx264 4:4:4 keeps it)"
            )
        return PyAVEncoder(path, info, audio_from)
    try:
        return NvEncoder(path, info, audio_from)
    except Exception as exc:  # no NVENC on this GPU (H100/H200/A100), or no GPU at all
        if kind == "nvenc":
            raise CodecUnavailable(
                f"NVENC encoder unavailable ({_reason(exc)}; H100, H200 and A100 have no "
                "NVENC): use --encoder cpu or auto"
            ) from exc
        LOG.warning(
            "No NVENC encoder on this GPU (%s; H100, H200 and A100 have none): "
            "encoding on the CPU with libx264",
            _reason(exc),
        )
        return PyAVEncoder(path, info, audio_from)


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
