"""Video/image I/O of the clients: PyAV round trip, timestamps, audio copy, bad files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tddfa.files import atomic_path, is_temporary
from tddfa_clients.image import ImageError, read_image, write_image
from tddfa_clients.video_io import VideoError, open_decoder, open_encoder, probe


@pytest.fixture(scope="module")
def av_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-frame 25 fps 64x48 H.264 video with an AAC audio stream (0.8 s)."""
    path = tmp_path_factory.mktemp("av") / "with_audio.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), "rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for i in range(13):
            samples = av.AudioFrame.from_ndarray(
                np.sin(np.arange(1024, dtype=np.float32) / 5)[None], format="fltp", layout="mono"
            )
            samples.sample_rate, samples.pts = 16000, i * 1024
            out.mux(audio.encode(samples))
        out.mux(audio.encode(None))
    return path


def _frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(f.time) for f in container.decode(video=0)]


def _round_trip(source: Path, target: Path) -> list[int]:
    info = probe(source)
    pts = []
    with (
        open_decoder(source, "cpu") as decoder,
        open_encoder(target, info, "cpu", source if info.has_audio else None) as encoder,
    ):
        for frame in decoder:
            assert frame.host_image().shape == (info.height, info.width, 3)
            encoder.write(255 - frame.host_image(), frame.pts)
            pts.append(frame.pts)
    return pts


def test_round_trip_keeps_frames_rate_and_timestamps(asset_dir: Path, tmp_path: Path) -> None:
    source = asset_dir / "video" / "two_faces_360p.mp4"
    target = tmp_path / "out.mp4"
    pts = _round_trip(source, target)
    info, out = probe(source), probe(target)
    assert len(pts) == info.frame_count == out.frame_count == 50
    assert (out.width, out.height) == (640, 360)
    assert abs(float(out.average_rate) - float(info.average_rate)) < 0.01
    expected = [p * float(info.time_base) for p in pts]
    assert np.allclose(_frame_times(target), expected, atol=1e-4)


def test_encoder_is_done_with_the_image_when_write_returns(av_video: Path, tmp_path: Path) -> None:
    """The video client hands the encoder RENDERED in a shared memory slot and reuses the
    slot as soon as write returns: one buffer overwritten after every write must encode
    exactly as separate images do."""
    info = probe(av_video)
    with open_decoder(av_video, "cpu") as decoder:
        frames = [(255 - f.host_image(), f.pts) for f in decoder]
    reused = np.empty_like(frames[0][0])
    with open_encoder(tmp_path / "separate.mp4", info, "cpu") as separate:
        for image, pts in frames:
            separate.write(image, pts)
    with open_encoder(tmp_path / "reused.mp4", info, "cpu") as encoder:
        for image, pts in frames:
            reused[:] = image
            encoder.write(reused, pts)
            reused[:] = 0  # the slot's next frame

    def packets(path: Path) -> list[bytes]:
        with av.open(str(path)) as container:
            return [bytes(p) for p in container.demux(video=0) if p.size]

    assert packets(tmp_path / "reused.mp4") == packets(tmp_path / "separate.mp4")


def test_audio_stream_is_copied(av_video: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    _round_trip(av_video, target)
    with av.open(str(av_video)) as a, av.open(str(target)) as b:
        assert [s.type for s in b.streams] == ["video", "audio"]
        src = [(p.pts, bytes(p)) for p in a.demux(audio=0) if p.dts is not None]
        dst = [(p.pts, bytes(p)) for p in b.demux(audio=0) if p.dts is not None]
    assert dst == src
    assert len(_frame_times(target)) == 20


def test_encoder_abort_and_atomic_output_leave_nothing(av_video: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    info = probe(av_video)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as temp, open_encoder(temp, info, "cpu", av_video) as enc:
            assert is_temporary(temp) and temp.suffix == ".mp4"
            with open_decoder(av_video, "cpu") as decoder:
                for frame in decoder:
                    enc.write(frame.host_image(), frame.pts)
                    raise KeyboardInterrupt  # Ctrl-C in the middle of a video
    assert list(tmp_path.iterdir()) == []


def test_probe_reports_geometry_and_timing(av_video: Path) -> None:
    info = probe(av_video)
    assert (info.width, info.height, info.frame_count) == (64, 48, 20)
    assert info.average_rate == Fraction(25) and info.has_audio and info.codec == "h264"


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a video\n", "truncated"],
    ids=["zero-byte", "text-named-mp4", "truncated-mp4"],
)
def test_bad_videos_raise_video_error(content, asset_dir: Path, tmp_path: Path) -> None:
    if content == "truncated":
        content = (asset_dir / "video" / "two_faces_360p.mp4").read_bytes()[:20000]
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match="bad.mp4"):
        with open_decoder(path, "cpu") as decoder:
            list(decoder)


def test_missing_video_raises_video_error(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="No such file"):
        probe(tmp_path / "missing.mp4")


def test_image_round_trip_png_exact_jpeg_close(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", image)
    assert np.array_equal(read_image(tmp_path / "a.png"), image)
    smooth = np.repeat(np.repeat(image[:5, :7], 8, 0), 8, 1)
    write_image(tmp_path / "a.jpg", smooth)
    assert np.abs(read_image(tmp_path / "a.jpg").astype(int) - smooth).mean() < 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.png"]


def test_sixteen_bit_png_is_refused(tmp_path: Path) -> None:
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 8, 8, "rgb48be"
    frame = av.VideoFrame.from_ndarray(np.zeros((8, 8, 3), np.uint16), format="rgb48be")
    (tmp_path / "deep.png").write_bytes(
        b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])
    )
    with pytest.raises(ImageError, match="16-bit"):
        read_image(tmp_path / "deep.png")


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.raises(ImageError, match="cannot decode"):
        read_image(tmp_path / "x.jpg")


def test_without_pyav_opencv_reads_and_writes(av_video: Path, tmp_path: Path, monkeypatch, caplog):
    """The GPU machines have OpenCV but not PyAV: probe, decode and encode still work, with
    frame-index timestamps at the average rate, no audio, and one notice saying so."""
    from tddfa_clients import video_io

    monkeypatch.setattr(video_io, "have_pyav", lambda: False)
    info = video_io.probe(av_video)
    assert (info.width, info.height, info.frame_count) == (64, 48, 20)
    assert info.average_rate == 25 and info.time_base == Fraction(1, 25)
    assert not info.has_audio
    target = tmp_path / "out.mp4"
    with caplog.at_level("WARNING"):
        with (
            video_io.open_decoder(av_video, "cpu") as decoder,
            video_io.open_encoder(target, info, "auto") as encoder,
        ):
            assert decoder.name == "cpu (OpenCV)" and encoder.name == "cpu (OpenCV mpeg4)"
            pts = []
            for frame in decoder:
                encoder.write(255 - frame.host_image(), frame.pts)
                pts.append(frame.pts)
    assert pts == list(range(20))
    assert "without audio" in caplog.text
    with av.open(str(target)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 20
    assert abs(float(decoded[3].mean()) - (255 - 30)) < 8  # frame 3 was grey 30, inverted
