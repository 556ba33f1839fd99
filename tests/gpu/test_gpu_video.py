"""``tddfa video`` with NVDEC on the GPU: decoded frames are copied device
to device into CUDA shared memory and RENDERED comes back the same way.

PyNvVideoCodec's SimpleDecoder reuses its output surfaces: a frame held past the next pull
was overwritten on an H200 (27-35 grey levels off). These tests compare the CUDA path with
frames copied to the host the moment they are decoded, so a frame overwritten before its
copy shows as a large difference. Skipped without PyNvVideoCodec (benchmarks/device_pack.sh
carries it, trimmed from its wheel in .whl/).
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import pytest

from tddfa_clients.video_io import nvidia_codec_available

pytestmark = pytest.mark.skipif(
    not nvidia_codec_available(), reason="PyNvVideoCodec is not installed (NVDEC)"
)
FRAMES = 60
# fp16 networks under dynamic batching: a frame batched differently may move a vertex by a
# fraction of a pixel; the surface-reuse bug moved whole frames by 27-35 grey levels
MEAN_ABS_LIMIT = 1.0


@pytest.fixture(scope="module")
def video(asset_dir: Path) -> Path:
    return asset_dir / "video" / "emma720.mp4"


def rendered_frames(url: str, frames, shared_memory: str, limit: int = FRAMES) -> list:
    """RENDERED of the first ``limit`` frames, as host arrays, through ``shared_memory``."""
    import cupy

    from tddfa_clients.triton_client import FrameClient

    with FrameClient(
        url,
        "grpc",
        outputs=("RENDERED", "FACE_COUNT"),
        in_flight=4,
        shared_memory=shared_memory,
        rendered_on_device=shared_memory == "cuda",
        timeout=120,
    ) as client:
        assert client.shared_memory_kind == shared_memory
        out = []
        for _, result in client.infer_stream(itertools.islice(frames, limit)):
            image = result.rendered
            out.append(cupy.asnumpy(image) if isinstance(image, cupy.ndarray) else image)
    return out


def reference(url: str, video: Path, limit: int = FRAMES) -> list:
    """NVDEC frames copied to the host as they are decoded, sent in the request body."""
    from tddfa_clients.video import host_frames
    from tddfa_clients.video_nvidia import NvDecoder

    with NvDecoder(video) as decoder:
        return rendered_frames(url, host_frames(decoder), "none", limit)


def assert_same_frames(got: list, want: list) -> None:
    assert len(got) == len(want)
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
        assert diff < MEAN_ABS_LIMIT, f"frame {index}: mean |difference| {diff:.2f} grey levels"


def test_nvdec_frames_through_cuda_shared_memory(gpu_server, video):
    from tddfa_clients.video import device_frames
    from tddfa_clients.video_nvidia import NvDecoder

    with NvDecoder(video) as decoder:
        assert decoder.on_device
        got = rendered_frames(gpu_server, device_frames(decoder), "cuda")
    assert_same_frames(got, reference(gpu_server, video))


def test_sixteen_streams_do_not_mix(gpu_server, video):
    """16 NVDEC streams at once, each through its own CUDA slots: every stream gets its own
    frames back (no slot or surface shared across streams)."""
    from tddfa_clients.video import device_frames
    from tddfa_clients.video_nvidia import NvDecoder

    want = reference(gpu_server, video, 30)
    results: dict[int, list] = {}
    errors: list = []

    def stream(index: int) -> None:
        try:
            with NvDecoder(video) as decoder:
                results[index] = rendered_frames(gpu_server, device_frames(decoder), "cuda", 30)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"stream {index}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert sorted(results) == list(range(16))
    for frames in results.values():
        assert_same_frames(frames, want)


def test_tddfa_video_cli_end_to_end(gpu_server, video, tmp_path, caplog):
    """`tddfa video --decoder nvdec` picks CUDA shared memory by itself (local server,
    models on the GPU) and writes every frame (here without PyAV: OpenCV's MPEG-4)."""
    import cv2

    from tddfa_tools.cli import main

    out = tmp_path / "emma_rendered.mp4"
    argv = ["video", str(video), str(out), "--url", gpu_server, "--protocol", "grpc"]
    with caplog.at_level("INFO"):
        assert main([*argv, "--decoder", "nvdec"]) == 0
    assert "-> cuda shared memory ->" in caplog.text
    capture = cv2.VideoCapture(str(out))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 300
