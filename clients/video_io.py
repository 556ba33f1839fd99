"""Video decode and encode for the clients: the interface, and which implementation runs.

Decoders yield :class:`Frame` objects (an RGB image plus its presentation timestamp);
encoders take the rendered images back with the same timestamps, so the output keeps the
input's frame count, frame rate and timing. The implementations live beside this module:

* ``video_pyav``: FFmpeg through PyAV on the CPU (decode, libx264 encode, muxing, the audio
  stream copied packet by packet);
* ``video_nvidia``: NVDEC/NVENC through PyNvVideoCodec; decoded frames stay on the GPU;
* ``video_opencv``: OpenCV's FFmpeg, for machines without PyAV (the GPU machines here):
  probe, decode and an MPEG-4 encoder, constant frame rate and no audio, said once.

Choosing (``open_decoder`` / ``open_encoder``):

* decoder ``auto``: NVDEC when PyNvVideoCodec imports and a GPU is usable, else the CPU;
* encoder ``auto``: NVENC when an encoder can be created (the only reliable test: H100,
  H200 and A100 have no NVENC) and PyAV can mux it, else the CPU with one notice.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from tddfa_clients.optional import installed
from tddfa_clients.orientation import IDENTITY, Orientation

LOG = logging.getLogger(__name__)

DECODERS = ("auto", "nvdec", "cpu")
OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")  # containers H.264 + copied audio go into
ENCODERS = ("auto", "nvenc", "cpu")
NO_PYAV_HINT = "install PyAV (pip install av) for audio and exact timestamps"
X264_PRESETS = (  # libx264's speed/size trade-offs, fastest first
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class EncoderSettings:
    """libx264's quality (``crf``: 0 lossless .. 51; lower is better and larger) and speed
    (``preset``); the defaults keep the quality every earlier release wrote. NVENC keeps its
    own defaults."""

    crf: int = 20
    preset: str = "veryfast"


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

    image: (H, W, 3) uint8 RGB; a numpy array (CPU decoders) or a CuPy array on the GPU
    (NVDEC; valid until the decoder's next frame: the decoder reuses its surfaces).
    ``host_image()`` gives numpy in both cases.
    pts: presentation timestamp in ``VideoInfo.time_base`` units.
    """

    image: Any
    pts: int
    index: int

    def host_image(self) -> np.ndarray:
        """The image as a C-contiguous numpy (H, W, 3) uint8 array."""
        return host_array(self.image)


def host_array(image: Any) -> np.ndarray:
    """numpy for a numpy or any CUDA image (CuPy, or a DLPack producer): a device-to-host
    copy for the latter."""
    if isinstance(image, np.ndarray):
        return np.ascontiguousarray(image)
    import cupy  # only device arrays reach this line, so CuPy is there

    if not isinstance(image, cupy.ndarray):
        image = cupy.from_dlpack(image)
    return cupy.asnumpy(image)


def have_pyav() -> bool:
    return installed("av")


def probe(path: str | Path) -> VideoInfo:
    """Read the video stream's geometry and timing; raises VideoError on a bad file.

    PyAV when installed; else OpenCV (frame rate and count from the header, pts = frame
    index, no audio); else VideoError naming the fix.
    """
    if have_pyav():
        from tddfa_clients.video_pyav import probe_pyav

        return probe_pyav(path)
    if installed("cv2"):
        from tddfa_clients.video_opencv import probe_opencv

        return probe_opencv(path)
    raise VideoError(f"{path}: no video library to read it: {NO_PYAV_HINT}")


def reason(exc: BaseException) -> str:
    """One line describing ``exc`` without repeating the file name."""
    strerror = getattr(exc, "strerror", None)  # OSError and av.FFmpegError
    if strerror:
        return str(strerror)
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclasses.dataclass(frozen=True)
class VideoStats:
    frames: int
    seconds: float
    decoder: str
    encoder: str
    transport: str = "none"  # shared memory: cuda, system or none

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def check_output_name(output: Path) -> None:
    """VideoError unless ``output`` ends in a container this client writes."""
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise VideoError(
            f"{output}: cannot write {output.suffix or 'a file without suffix'} video; name the "
            f"output {', '.join(OUTPUT_SUFFIXES)}"
        )


@contextlib.contextmanager
def json_lines(paths: list[Path]) -> Iterator[TextIO | None]:
    """The JSON Lines file open for writing at ``paths[0]`` (None when there is none)."""
    if not paths:
        yield None
        return
    with open(paths[0], "w") as handle:
        yield handle


# ---------------------------------------------------------------------------------------
# Interfaces


class Decoder(abc.ABC):
    """Iterate over the frames of a video file in presentation order."""

    name = "decoder"
    on_device = False  # True: Frame.image is a CuPy array on the GPU

    def __init__(self, path: str | Path, info: VideoInfo | None = None):
        self.path = Path(path)
        self.info = info or probe(self.path)

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Frame]: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Release the decoder's resources (idempotent)."""

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Encoder(abc.ABC):
    """Write RGB frames with their timestamps to ``path``.

    ``close()`` finishes the file; ``abort()`` stops without finishing it (the caller
    deletes the partial file). Used as a context manager, an exception aborts.
    ``on_device``: True when ``write`` takes CUDA images without a host copy.
    """

    name = "encoder"
    on_device = False

    def __init__(self, path: str | Path, info: VideoInfo):
        self.path = Path(path)
        self.info = info
        self.frames_written = 0

    @abc.abstractmethod
    def write(self, image: Any, pts: int) -> None:
        """Encode one (H, W, 3) uint8 RGB frame (numpy, or CuPy) at ``pts``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and finish the file."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop without finishing the file."""

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------------------------
# Choice


def nvidia_codec_available() -> bool:
    """True when PyNvVideoCodec imports (a GPU may still be missing)."""
    try:
        import PyNvVideoCodec  # noqa: F401
    except (ImportError, OSError):
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


def _cpu_decoder(path: str | Path) -> Decoder:
    if have_pyav():
        from tddfa_clients.video_pyav import PyAVDecoder

        return PyAVDecoder(path)
    from tddfa_clients.video_opencv import OpenCVDecoder

    return OpenCVDecoder(path)


def open_decoder(path: str | Path, kind: str = "auto", gpu_id: int = 0) -> Decoder:
    """A decoder for ``path``: ``nvdec``, ``cpu`` or ``auto`` (NVDEC when usable)."""
    if kind not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {kind!r}")
    if kind == "cpu" or (kind == "auto" and not nvidia_codec_available()):
        return _cpu_decoder(path)
    try:
        from tddfa_clients.video_nvidia import NvDecoder

        return NvDecoder(path, gpu_id=gpu_id)
    except VideoError:
        raise
    except Exception as exc:  # no GPU, driver or codec support: fall back unless forced
        if kind == "nvdec":
            raise CodecUnavailable(
                f"NVDEC decoder unavailable ({reason(exc)}): use --decoder cpu or auto"
            ) from exc
        LOG.info("NVDEC unavailable (%s); decoding on the CPU", reason(exc))
        return _cpu_decoder(path)


def _cpu_encoder(
    path: str | Path, info: VideoInfo, audio_from: str | Path | None, settings: EncoderSettings
) -> Encoder:
    if have_pyav():
        from tddfa_clients.video_pyav import PyAVEncoder

        return PyAVEncoder(path, info, audio_from, settings.crf, settings.preset)
    from tddfa_clients.video_opencv import OpenCVEncoder

    LOG.warning(
        "PyAV is not installed: encoding MPEG-4 with OpenCV at a constant %s frames/s, "
        "without audio (%s)",
        info.average_rate,
        NO_PYAV_HINT,
    )
    return OpenCVEncoder(path, info)


def open_encoder(
    path: str | Path,
    info: VideoInfo,
    kind: str = "auto",
    audio_from: str | Path | None = None,
    gpu_id: int = 0,
    settings: EncoderSettings = EncoderSettings(),  # noqa: B008  (frozen)
) -> Encoder:
    """An encoder for ``path``: ``nvenc``, ``cpu`` or ``auto`` (NVENC when the GPU has one);
    ``settings`` for libx264."""
    if kind not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {kind!r}")
    if kind == "cpu":
        return _cpu_encoder(path, info, audio_from, settings)
    missing = (
        "PyNvVideoCodec is not installed"
        if not nvidia_codec_available()
        else "PyAV (which muxes the NVENC stream) is not installed"
        if not have_pyav()
        else None
    )
    if missing:
        if kind == "nvenc":
            raise CodecUnavailable(f"NVENC requested but {missing}: use --encoder cpu or auto")
        return _cpu_encoder(path, info, audio_from, settings)
    if info.odd_size:  # NVENC is 4:2:0 only
        if kind == "nvenc":
            raise CodecUnavailable(
                f"NVENC codes 4:2:0 only, which needs even sizes; this video is "
                f"{info.width}x{info.height}: use --encoder cpu (libx264 4:4:4 keeps it)"
            )
        return _cpu_encoder(path, info, audio_from, settings)
    try:
        from tddfa_clients.video_nvenc import NvEncoder

        return NvEncoder(path, info, audio_from, gpu_id=gpu_id)
    except Exception as exc:  # no NVENC on this GPU (H100/H200/A100), or no GPU at all
        if kind == "nvenc":
            raise CodecUnavailable(
                f"NVENC encoder unavailable ({reason(exc)}; H100, H200 and A100 have no "
                "NVENC): use --encoder cpu or auto"
            ) from exc
        LOG.warning(
            "No NVENC encoder on this GPU (%s; H100, H200 and A100 have none): "
            "encoding on the CPU (rendered frames copied to the host)",
            reason(exc),
        )
        return _cpu_encoder(path, info, audio_from, settings)
