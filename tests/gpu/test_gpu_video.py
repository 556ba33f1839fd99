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


def stream_sinks(count: int, want: list, limit: int):
    """Per stream a sink comparing its first ``limit`` rendered frames (CUDA views of the
    output regions) with ``want``; returns (sinks, {stream: [mean |difference| per frame]})."""
    import cupy

    diffs: dict[int, list[float]] = {i: [] for i in range(count)}

    def sink_for(stream: int):
        def sink(index, result):
            assert isinstance(result.rendered, cupy.ndarray)  # left on the device
            if index < limit:
                got = cupy.asnumpy(result.rendered).astype(np.int16)
                diffs[stream].append(float(np.abs(got - want[index].astype(np.int16)).mean()))

        return sink

    return [sink_for(i) for i in range(count)], diffs


def test_stream_client_sixteen_nvdec_streams_in_one_process(gpu_server, video):
    """`tddfa video`'s stream client: 16 NVDEC videos in one process, frames copied device
    to device into CUDA shared memory (blocking event waits, no device-wide synchronisation),
    RENDERED read in place: every stream's frames equal the host-copied reference."""
    from tddfa_clients.video_streams import StreamOptions, VideoJob, run_videos

    want = reference(gpu_server, video, 30)
    sinks, diffs = stream_sinks(16, want, 30)
    options = StreamOptions(in_flight=4, shared_memory="cuda", decoder="nvdec", timeout=120)
    results = run_videos(gpu_server, [VideoJob(video, sink=s) for s in sinks], options)
    for stats in results:
        assert not isinstance(stats, BaseException), stats
        assert (stats.frames, stats.transport) == (300, "cuda")
    for stream, values in diffs.items():
        assert len(values) == 30 and max(values) < MEAN_ABS_LIMIT, (stream, values)


def test_stream_client_sequences_match_the_frame_client(gpu_server, video):
    """Track mode: two NVDEC sequences through the stream client give the frames one
    sequence through the FrameClient gives (host-copied NVDEC frames, request body)."""
    import cupy

    from tddfa_clients.triton_client import FrameClient, new_sequence_id
    from tddfa_clients.video import host_frames
    from tddfa_clients.video_nvidia import NvDecoder
    from tddfa_clients.video_streams import StreamOptions, VideoJob, run_videos

    limit = 25  # compared frames, well before the reference sequence's END (smoothing)
    with NvDecoder(video) as decoder, FrameClient(
        gpu_server, "grpc", model="tddfa_track", outputs=("RENDERED", "FACE_COUNT"),
        in_flight=4, shared_memory="none", timeout=120,
    ) as client:  # fmt: skip
        frames = itertools.islice(host_frames(decoder), limit + 5)
        want = [
            r.rendered if isinstance(r.rendered, np.ndarray) else cupy.asnumpy(r.rendered)
            for _, r in client.infer_stream(frames, sequence_id=new_sequence_id())
        ]
    sinks, diffs = stream_sinks(2, want, limit)
    options = StreamOptions(
        model="tddfa_track", in_flight=4, shared_memory="cuda", decoder="nvdec", timeout=120
    )
    results = run_videos(gpu_server, [VideoJob(video, sink=s) for s in sinks], options)
    assert all(not isinstance(r, BaseException) and r.frames == 300 for r in results), results
    for stream, values in diffs.items():
        assert len(values) == limit and max(values) < MEAN_ABS_LIMIT, (stream, values)
