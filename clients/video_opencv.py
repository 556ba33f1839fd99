"""OpenCV's FFmpeg for machines without PyAV (the GPU machines here have OpenCV, not PyAV):
probe, CPU decode, and an MPEG-4 encoder. Limits, said once by ``open_encoder``: constant
frame rate (the header's average), pts = frame index, and no audio."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tddfa_clients.video_io import Decoder, Encoder, Frame, VideoError, VideoInfo, host_array


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)


def probe_opencv(path: str | Path) -> VideoInfo:
    capture = cv2.VideoCapture(str(path))
    try:
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if not capture.isOpened() or width <= 0 or height <= 0:
            raise VideoError(f"{path}: cannot open as a video (OpenCV)")
        rate = _rate(float(capture.get(cv2.CAP_PROP_FPS) or 0))
        return VideoInfo(
            width=width,
            height=height,
            frame_count=max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0),
            average_rate=rate,
            time_base=1 / rate,  # pts = frame index
            codec="unknown",
            has_audio=False,  # OpenCV does not see audio: none is copied
        )
    finally:
        capture.release()


class OpenCVDecoder(Decoder):
    """OpenCV (FFmpeg) decoding on the CPU; numpy RGB frames, pts = frame index."""

    name = "cpu (OpenCV)"

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._capture = cv2.VideoCapture(str(self.path))

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            ok, bgr = self._capture.read()
            if not ok:
                break
            yield Frame(np.ascontiguousarray(bgr[:, :, ::-1]), index, index)
            index += 1
        if index == 0:
            raise VideoError(f"{self.path}: the video stream holds no decodable frame")

    def close(self) -> None:
        self._capture.release()


class OpenCVEncoder(Encoder):
    """MPEG-4 Part 2 through OpenCV's VideoWriter at the input's average frame rate."""

    name = "cpu (OpenCV mpeg4)"

    def __init__(self, path: str | Path, info: VideoInfo):
        super().__init__(path, info)
        self._writer = cv2.VideoWriter(
            str(self.path),
            cv2.VideoWriter_fourcc(*"mp4v"),
            float(info.average_rate),
            (info.width, info.height),
        )
        if not self._writer.isOpened():
            raise VideoError(f"{self.path}: OpenCV cannot write MPEG-4 here")

    def write(self, image: Any, pts: int) -> None:
        self._writer.write(np.ascontiguousarray(host_array(image)[:, :, ::-1]))
        self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def abort(self) -> None:
        self.close()
