"""Display orientation and exact sizes in the video client: rotated videos come out
upright (results in display orientation), odd sizes come back unchanged."""

from __future__ import annotations

import itertools
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tddfa_clients.orientation import IDENTITY, Orientation, from_display_matrix
from tddfa_clients.video_io import open_decoder, open_encoder, probe

ONE = 1 << 16  # 16.16 fixed point
W_FIXED = 1 << 30  # the matrix's w entry is 2.30 fixed point


def matrix_bytes(a: int, b: int, c: int, d: int) -> bytes:
    return struct.pack("<9i", a * ONE, b * ONE, 0, c * ONE, d * ONE, 0, 0, 0, W_FIXED)


def reference_transform(image: np.ndarray, a: int, b: int, c: int, d: int) -> np.ndarray:
    """The display matrix's definition, pixel by pixel: (p', q') = (p, q) @ [[a, b], [c, d]]
    (p = column, q = row), shifted so the result starts at (0, 0)."""
    height, width = image.shape[:2]
    points = {(p, q): (p * a + q * c, p * b + q * d) for p in range(width) for q in range(height)}
    min_p = min(x for x, _ in points.values())
    min_q = min(y for _, y in points.values())
    out_w = max(x for x, _ in points.values()) - min_p + 1
    out_h = max(y for _, y in points.values()) - min_q + 1
    out = np.zeros((out_h, out_w, image.shape[2]), image.dtype)
    for (p, q), (x, y) in points.items():
        out[y - min_q, x - min_p] = image[q, p]
    return out


AXIS_ALIGNED = [
    (a, b, c, d)
    for a, b, c, d in itertools.product((-1, 0, 1), repeat=4)
    if abs(a * d - b * c) == 1 and (a == 0) == (d == 0) and (b == 0) == (c == 0)
]


@pytest.mark.parametrize("entries", AXIS_ALIGNED, ids=str)
def test_every_axis_aligned_matrix_matches_its_definition(entries) -> None:
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    orientation = from_display_matrix(matrix_bytes(*entries))
    assert orientation == Orientation(*entries)
    turned = orientation.apply(image)
    assert turned.flags.c_contiguous
    np.testing.assert_array_equal(turned, reference_transform(image, *entries))
    assert orientation.display_size(7, 5) == turned.shape[1::-1]


def test_unusual_matrices_are_ignored() -> None:
    assert len(AXIS_ALIGNED) == 8
    assert from_display_matrix(None) is IDENTITY
    assert from_display_matrix(b"\0" * 36) is IDENTITY  # degenerate
    half = int(ONE * 0.7071)
    assert from_display_matrix(struct.pack("<9i", half, -half, 0, half, half, 0, 0, 0, W_FIXED))
    assert from_display_matrix(
        struct.pack("<9i", half, -half, 0, half, half, 0, 0, 0, W_FIXED)
    ).is_identity


def _write_video(path: Path, width: int, height: int, rotation: int | None, frames: int = 6):
    """A video whose frames are stored sideways: a white block in the stored top-left."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[: height // 2, : width // 4] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_video_is_decoded_and_written_upright(tmp_path: Path, rotation: int) -> None:
    source = tmp_path / "rotated.mp4"
    _write_video(source, 64, 48, rotation)
    info = probe(source)
    assert info.orientation.degrees == rotation % 360
    turned = rotation % 180 != 0
    assert (info.width, info.height) == ((48, 64) if turned else (64, 48))
    # what a player shows: the stored frame rotated counterclockwise by `rotation`
    stored = np.zeros((48, 64, 3), np.uint8)
    stored[:24, :16] = 255
    expected = np.rot90(stored, rotation // 90)
    target = tmp_path / "out.mp4"
    with open_decoder(source, "cpu") as decoder, open_encoder(target, info, "cpu") as encoder:
        frames = list(decoder)
        for frame in frames:
            image = frame.host_image()
            assert image.shape == expected.shape
            assert np.abs(image.astype(int) - expected).mean() < 8  # coding loss only
            encoder.write(image, frame.pts)
    out = probe(target)
    assert out.orientation.is_identity  # no rotation tag: plays upright everywhere
    assert (out.width, out.height) == (info.width, info.height)
    with av.open(str(target)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert np.abs(first.astype(int) - expected).mean() < 8


@pytest.mark.parametrize("size", [(641, 359), (640, 359), (641, 360)])
def test_odd_sizes_come_back_exactly(tmp_path: Path, size: tuple[int, int]) -> None:
    width, height = size
    source = tmp_path / "odd.mkv"
    with av.open(str(source), "w") as container:  # FFV1 codes any size losslessly
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "bgr0"
        rng = np.random.default_rng(0)
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(
                rng.integers(0, 255, (height, width, 3), dtype=np.uint8), format="rgb24"
            )
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe(source)
    assert (info.width, info.height) == size and info.odd_size
    target = tmp_path / "out.mp4"
    with open_decoder(source, "cpu") as decoder, open_encoder(target, info, "cpu") as encoder:
        for frame in decoder:
            encoder.write(frame.host_image(), frame.pts)
    out = probe(target)
    assert (out.width, out.height) == size
    with av.open(str(target)) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == size
        assert frame.to_ndarray(format="rgb24").shape == (height, width, 3)


def test_forced_nvenc_refuses_odd_sizes_with_the_fix(tmp_path: Path, monkeypatch) -> None:
    from tddfa_clients import video_io

    monkeypatch.setattr(video_io, "nvidia_codec_available", lambda: True)
    info = video_io.VideoInfo(641, 359, 1, Fraction(25), Fraction(1, 25), "h264", False)
    with pytest.raises(video_io.CodecUnavailable, match=r"641x359: use --encoder cpu"):
        video_io.open_encoder(tmp_path / "x.mp4", info, "nvenc")
