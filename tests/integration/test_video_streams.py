"""Several videos through one server from one process (tddfa_clients.video_streams), against
the stand-in ensembles of test_clients (real tritonserver, the ensembles' exact contract:
RENDERED = 255 - IMAGE, one face; frames smaller than 16 px refused)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import test_clients

from tddfa_clients.video_io import EncoderSettings, VideoError, probe
from tddfa_clients.video_streams import StreamOptions, VideoJob, run_videos
from tddfa_tools.cli import main

pytestmark = pytest.mark.server

standin_repository = test_clients.standin_repository  # the stand-in server's fixtures
standin_server = test_clients.standin_server


@pytest.fixture(scope="module")
def clip(asset_dir: Path) -> Path:
    return asset_dir / "video" / "two_faces_360p.mp4"


def tiny_video(path: Path, frames: int = 3) -> Path:
    """An 8x8 video: every frame is refused by the stand-in (under 16 px)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width = stream.height = 8
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((8, 8, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def first_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize(
    ("mode", "shared_memory"),
    [("detect", "system"), ("detect", "none"), ("track", "system"), ("track", "none")],
)
def test_videos_at_once_in_one_process(standin_server, clip, tmp_path, mode, shared_memory):
    """Three copies of a clip at once: every frame rendered, in order, with its JSON line;
    the outputs equal one another and invert the input (the stand-in's RENDERED)."""
    model = "tddfa_track" if mode == "track" else "tddfa"
    outputs = ("RENDERED", "FACE_COUNT", "FACE_BOXES", "LANDMARKS", "POSE", "PARAMS")
    if mode == "track":
        outputs += ("TRACK_IDS",)
    options = StreamOptions(
        model=model, outputs=outputs, in_flight=3, shared_memory=shared_memory, timeout=60
    )
    jobs = [VideoJob(clip, tmp_path / f"out{i}.mp4", tmp_path / f"out{i}.jsonl") for i in range(3)]
    results = run_videos(standin_server.grpc_url, jobs, options)
    count = probe(clip).frame_count
    for job, stats in zip(jobs, results, strict=True):
        assert not isinstance(stats, BaseException), stats
        assert (stats.frames, stats.transport) == (count, shared_memory)
        assert frame_count(job.output) == count
        lines = [json.loads(line) for line in job.json_path.read_text().splitlines()]
        assert [line["frame"] for line in lines] == list(range(count))
        assert all(len(line["faces"]) == 1 for line in lines)
        if mode == "track":
            assert lines[0]["faces"][0]["track_id"] == 1
    # libx264 at crf 20: the inverted frame within a few grey levels
    assert np.abs(first_frames(jobs[0].output) - (255 - first_frames(clip))).mean() < 3
    assert not list(tmp_path.glob("*.part*"))  # every staged file renamed


def test_a_refused_video_fails_alone(standin_server, clip, tmp_path):
    """A video whose frames the server refuses fails with the server's message and leaves
    no file; the video beside it is complete."""
    bad = tiny_video(tmp_path / "tiny.mp4")
    jobs = [VideoJob(bad, tmp_path / "bad_out.mp4"), VideoJob(clip, tmp_path / "good_out.mp4")]
    results = run_videos(standin_server.grpc_url, jobs, StreamOptions(in_flight=2, timeout=60))
    assert isinstance(results[0], Exception) and "IMAGE too small" in str(results[0])
    assert not (tmp_path / "bad_out.mp4").exists()
    assert results[1].frames == probe(clip).frame_count
    assert frame_count(tmp_path / "good_out.mp4") == results[1].frames


def test_dropped_output_counts_every_frame(standin_server, clip):
    """No output (benchmarks): frames are answered and counted, nothing is written."""
    (stats,) = run_videos(standin_server.grpc_url, [VideoJob(clip)], StreamOptions(in_flight=4))
    assert stats.frames == probe(clip).frame_count and stats.encoder == "none"


def test_crf_sets_the_quality(standin_server, clip, tmp_path):
    sizes = []
    for crf in (12, 36):
        options = StreamOptions(encoder="cpu", encoder_settings=EncoderSettings(crf, "veryfast"))
        out = tmp_path / f"crf{crf}.mp4"
        (stats,) = run_videos(standin_server.grpc_url, [VideoJob(clip, out)], options)
        assert stats.frames == probe(clip).frame_count
        sizes.append(out.stat().st_size)
    assert sizes[1] < sizes[0] / 2


def test_cli_several_inputs_and_a_list(standin_server, clip, tmp_path):
    """`tddfa video IN IN --out-dir DIR --list FILE`: each input to DIR/<name>_rendered.mp4
    (or the list's OUT), JSON per video in the --json folder; a failed video is one error
    line and exit status 1, the others are written."""
    second = tmp_path / "second.mp4"
    second.write_bytes(clip.read_bytes())
    tiny_video(tmp_path / "tiny.mp4")
    listing = tmp_path / "videos.txt"
    listing.write_text("# a list\nsecond.mp4\tlisted.mp4\n\ntiny.mp4\n")
    out_dir, json_dir = tmp_path / "rendered", tmp_path / "json"
    json_dir.mkdir()
    argv = ["video", str(clip), "--out-dir", str(out_dir), "--list", str(listing),
            "--json", str(json_dir), "--url", standin_server.grpc_url, "--mode", "detect",
            "--preset", "ultrafast", "--crf", "28"]  # fmt: skip
    assert main(argv) == 1  # tiny.mp4 is refused by the stand-in
    count = probe(clip).frame_count
    assert frame_count(out_dir / "two_faces_360p_rendered.mp4") == count
    assert frame_count(tmp_path / "listed.mp4") == count
    assert not (out_dir / "tiny_rendered.mp4").exists()
    assert len((json_dir / "second.jsonl").read_text().splitlines()) == count


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a.mp4"], "give one input and its output"),
        (["a.mp4", "b.mp4", "c.mp4"], "give one input and its output"),
        (["a.mp4", "out.avi"], "cannot write .avi"),
    ],
)
def test_cli_names_the_mistake(argv, message, capsys):
    assert main(["video", *argv]) == 1
    assert message in capsys.readouterr().err


def test_same_output_twice_is_refused(tmp_path):
    from tddfa_clients.video_jobs import make_jobs

    with pytest.raises(VideoError, match="same output"):
        make_jobs([Path("x/a.mp4"), Path("y/a.mp4")], out_dir=tmp_path)


def test_sink_gets_every_frame_in_order(standin_server, clip):
    """A sink in place of an encoder: frame indexes in order, RENDERED readable during the
    call (the stand-in's 255 - IMAGE, checked against frames decoded here)."""
    from tddfa_clients.video_io import open_decoder

    with open_decoder(clip, "cpu") as decoder:
        want = [255 - frame.host_image() for frame in decoder]
    seen = []

    def sink(index, result):
        seen.append(index)
        assert np.array_equal(np.asarray(result.rendered), want[index])

    options = StreamOptions(in_flight=3, shared_memory="system")
    (stats,) = run_videos(standin_server.grpc_url, [VideoJob(clip, sink=sink)], options)
    assert seen == list(range(len(want))) and stats.frames == len(want)
