"""Clients against a real tritonserver.

Two servers: a stand-in ``tddfa`` model with the ensemble's exact tensor contract (it
inverts the frame and reports one fixed face) started here, so the client machinery is
tested without the networks; and the real repository (fixture ``triton_server``), for
which the tests skip with the reason when it is not available.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import tritonclient.http as httpclient

from tddfa_clients.batch import Settings, run_batch
from tddfa_clients.batch_manifest import MANIFEST, Manifest
from tddfa_clients.triton_client import FrameClient, InferenceError, normalize_url, served_models
from tddfa_clients.video import model_for, outputs_for, process_video
from tddfa_clients.video_io import probe

pytestmark = pytest.mark.server

STANDIN_CONFIG = """
name: "tddfa"
backend: "python"
max_batch_size: 8
input [ { name: "IMAGE", data_type: TYPE_UINT8, dims: [ -1, -1, 3 ] } ]
output [
  { name: "RENDERED", data_type: TYPE_UINT8, dims: [ -1, -1, 3 ] },
  { name: "FACE_COUNT", data_type: TYPE_INT32, dims: [ 1 ] },
  { name: "FACE_BOXES", data_type: TYPE_FP32, dims: [ 2, 5 ] },
  { name: "LANDMARKS", data_type: TYPE_FP32, dims: [ 2, 3, 68 ] },
  { name: "POSE", data_type: TYPE_FP32, dims: [ 2, 3 ] },
  { name: "PARAMS", data_type: TYPE_FP32, dims: [ 2, 62 ] }
]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
STANDIN_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            if min(image.shape[1:3]) < 16:
                message = f"IMAGE too small: {image.shape[1:3]}, need at least 16x16"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
                continue
            n = image.shape[0]
            boxes = np.zeros((n, 2, 5), np.float32)
            boxes[:, 0] = [1, 2, 3, 4, 0.9]
            tensors = {
                "RENDERED": (255 - image).astype(np.uint8),
                "FACE_COUNT": np.ones((n, 1), np.int32),
                "FACE_BOXES": boxes,
                "LANDMARKS": np.ones((n, 2, 3, 68), np.float32),
                "POSE": np.full((n, 2, 3), 5, np.float32),
                "PARAMS": np.zeros((n, 2, 62), np.float32),
            }
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(k, v) for k, v in tensors.items()]))
        return responses
"""
# The sequence ensemble's stand-in: the same answers plus TRACK_IDS, behind Triton's real
# sequence batcher (a frame without a sequence id, or a first frame without START, fails).
TRACK_CONFIG = (
    STANDIN_CONFIG.replace('name: "tddfa"', 'name: "tddfa_track"')
    .replace(
        '{ name: "PARAMS", data_type: TYPE_FP32, dims: [ 2, 62 ] }',
        '{ name: "PARAMS", data_type: TYPE_FP32, dims: [ 2, 62 ] },\n'
        '  { name: "TRACK_IDS", data_type: TYPE_INT32, dims: [ 2 ] }',
    )
    .replace(
        "instance_group",
        """sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 64 }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] }
  ]
}
instance_group""",
    )
)
TRACK_MODEL = STANDIN_MODEL.replace(
    '"PARAMS": np.zeros((n, 2, 62), np.float32),',
    '"PARAMS": np.zeros((n, 2, 62), np.float32),\n'
    '                "TRACK_IDS": np.ones((n, 2), np.int32),',
)
L2V_CONFIG = """
name: "face_aligner"
backend: "python"
input [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ 1 ] } ]
parameters { key: "regressor" value: { string_value: "mb05" } }
parameters { key: "bfm" value: { string_value: "approximate" } }
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
L2V_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())]) for r in requests]
"""


def _write_model(root: Path, name: str, config: str, model: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(textwrap.dedent(config))
    (root / name / "1" / "model.py").write_text(textwrap.dedent(model))


@pytest.fixture(scope="module")
def standin_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("standin_repository")
    _write_model(root, "tddfa", STANDIN_CONFIG, STANDIN_MODEL)
    _write_model(root, "face_aligner", L2V_CONFIG, L2V_MODEL)
    _write_model(root, "tddfa_track", TRACK_CONFIG, TRACK_MODEL)
    return root


@pytest.fixture(scope="module")
def standin_server(standin_repository: Path):
    serve = pytest.importorskip("tddfa_tools.serve.server")
    try:
        server = serve.TritonServer(standin_repository).start()
    except serve.TritonServerError as exc:
        pytest.skip(f"embedded tritonserver unavailable: {exc}")
    yield server
    server.stop()


def _client_regions() -> set[str]:
    """This process's client regions (other processes on the host may have their own)."""
    from tddfa_clients.triton_client import client_shm_prefix

    return {p.name for p in Path("/dev/shm").glob(f"{client_shm_prefix()}*")}


@pytest.mark.parametrize("shared_memory", ["none", "system"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_frame_client(standin_server, protocol: str, shared_memory: str) -> None:
    url = standin_server.url if protocol == "http" else standin_server.grpc_url
    before = _client_regions()
    rng = np.random.default_rng(1)
    with FrameClient(url, protocol, shared_memory=shared_memory, in_flight=3) as client:
        assert client.uses_shared_memory == (shared_memory == "system")
        image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        result = client.infer(image)
        assert np.array_equal(result.rendered, 255 - image)
        assert result.face_count == 1 and result.boxes.shape == (1, 5)
        assert result.landmarks.shape == (1, 3, 68) and result.params.shape == (1, 62)
        assert np.allclose(result.boxes[0], [1, 2, 3, 4, 0.9])
        # frames of different sizes, in order, with regions grown as needed
        frames = [(i, np.full((32 + 8 * i, 40, 3), i, np.uint8)) for i in range(10)]
        results = list(client.infer_stream(frames))
        assert [key for key, _ in results] == list(range(10))
        for i, res in results:
            assert res.rendered.shape == (32 + 8 * i, 40, 3) and (res.rendered == 255 - i).all()
        with pytest.raises(InferenceError, match="IMAGE too small"):
            client.infer(np.zeros((4, 4, 3), np.uint8))
        assert client.infer(image).face_count == 1  # the server is still fine
        assert client.served_models() == {"regressor": "mb05", "bfm": "approximate"}
    assert _client_regions() == before  # unregistered and destroyed


def test_client_checks_the_model_contract(standin_server) -> None:
    from tddfa_clients.triton_client import ModelMismatch

    with pytest.raises(ModelMismatch, match="no tensor VERTICES"):
        FrameClient(standin_server.url, "http", outputs=("RENDERED", "VERTICES"))
    with pytest.raises(ModelMismatch, match="not served"):
        FrameClient(standin_server.url, "http", model="nope")
    assert served_models(standin_server.grpc_url, "grpc")["regressor"] == "mb05"


def test_video_client_round_trip(standin_server, asset_dir: Path, tmp_path: Path) -> None:
    source = asset_dir / "video" / "two_faces_360p.mp4"
    with FrameClient(standin_server.grpc_url, "grpc", in_flight=4) as client:
        stats = process_video(
            client, source, tmp_path / "out.mp4", tmp_path / "out.jsonl", progress=False
        )
    assert stats.frames == 50
    info, out = probe(source), probe(tmp_path / "out.mp4")
    assert out.frame_count == 50 and abs(float(out.average_rate - info.average_rate)) < 0.01
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 50 and '"faces": [{"box": [1.0, 2.0, 3.0, 4.0]' in lines[0]
    with av.open(str(source)) as a, av.open(str(tmp_path / "out.mp4")) as b:
        first_in = next(a.decode(video=0)).to_ndarray(format="rgb24").astype(int)
        first_out = next(b.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert np.abs(first_out - (255 - first_in)).mean() < 6  # inverted, up to coding loss
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.mp4"]


def _bad_files(folder: Path, asset_dir: Path) -> None:
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video")
    data = (asset_dir / "video" / "two_faces_360p.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 8, 8, "rgb48be"
    frame = av.VideoFrame.from_ndarray(np.zeros((8, 8, 3), np.uint16), format="rgb48be")
    (folder / "deep.png").write_bytes(
        b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])
    )
    (folder / "unreadable.mp4").symlink_to(folder / "nowhere")


def test_batch_survives_a_server_restart(standin_server, asset_dir, tmp_path, monkeypatch) -> None:
    """The server is stopped while a video is being rendered (not before the batch starts
    or after it ends: the test waits for the video's temporary output), so a job really
    fails mid-run; the batch takes the server out, retries, and every good file ends done."""
    from tddfa.files import is_temporary
    from tddfa_clients.endpoints import Endpoints

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        shutil.copy(asset_dir / "video" / "two_faces_360p.mp4", inputs / f"v{i}.mp4")
    shutil.copy(asset_dir / "images" / "emma.jpg", inputs / "emma.jpg")
    _bad_files(inputs, asset_dir)
    out = tmp_path / "out"
    settings = Settings(protocol="grpc", in_flight=2, retries=10, backoff=0.3, backoff_max=2)
    url = standin_server.grpc_url
    counts: dict = {}
    marked_dead: list[str] = []
    mark_dead = Endpoints.mark_dead

    def spy(self, dead_url: str) -> None:
        marked_dead.append(dead_url)
        mark_dead(self, dead_url)

    monkeypatch.setattr(Endpoints, "mark_dead", spy)

    def batch() -> None:
        counts.update(run_batch([str(inputs)], out, [url], jobs=2, settings=settings))

    worker = threading.Thread(target=batch)
    worker.start()
    deadline = time.monotonic() + 60
    while not any(is_temporary(p) and p.suffix == ".mp4" for p in out.glob(".*")):
        assert time.monotonic() < deadline and worker.is_alive(), "no video started"
        time.sleep(0.01)
    standin_server.stop()  # killed while a video is in flight ...
    time.sleep(1.0)
    standin_server.start()  # ... and back on the same ports
    worker.join(timeout=240)
    assert not worker.is_alive()
    assert marked_dead, "no job met the stopped server: the kill did not happen mid-run"
    assert set(marked_dead) == {normalize_url(url, "grpc")}
    assert counts["failed"] == 5, counts  # the five bad files, nothing else
    counts.clear()
    batch()  # rerun: good work is skipped, bad files retried (and fail again)
    assert counts["already_done"] == 4 and counts["done"] == 0 and counts["failed"] == 5
    records = Manifest(out / MANIFEST).records
    good = {k: r for k, r in records.items() if r["status"] == "done"}
    assert sorted(Path(k).name for k in good) == ["emma.jpg", "v0.mp4", "v1.mp4", "v2.mp4"]
    for record in good.values():
        assert Path(record["output"]).is_file()
        if record["output"].endswith(".mp4"):
            assert probe(record["output"]).frame_count == 50 == record["frames"]
    bad = {Path(k).name: r["error"] for k, r in records.items() if r["status"] == "failed"}
    assert set(bad) == {"zero.mp4", "text.mp4", "truncated.mp4", "deep.png", "unreadable.mp4"}
    assert all(error and "\n" not in error for error in bad.values())
    files = sorted(p.name for p in out.rglob("*"))
    assert files == sorted(["emma.jpg", "v0.mp4", "v1.mp4", "v2.mp4", MANIFEST])


def test_perf_analyzer_reports_throughput(standin_server, asset_dir, tmp_path) -> None:
    from tddfa_clients.perf import PerfError, find_perf_analyzer, perf_environment

    try:
        find_perf_analyzer()
        perf_environment()
    except PerfError as exc:
        pytest.skip(str(exc))
    from tddfa_tools.cli import main

    code = main([
        "perf", "--url", standin_server.url, "--protocol", "both", "--outputs", "all",
        "--grpc-url", standin_server.grpc_url, "--concurrency", "1:2:1", "--frames", "4",
        "--video", str(asset_dir / "video" / "two_faces_360p.mp4"),
        "--measurement-interval", "1000", "--csv", str(tmp_path / "perf.csv"),
        # CI's 2 shared cores make windows noisy: this checks that a throughput is
        # reported, not that the host is quiet
        "--stability-percentage", "100", "--max-trials", "10",
    ])  # fmt: skip
    assert code == 0
    for protocol in ("http", "grpc"):
        text = (tmp_path / f"perf-{protocol}.csv").read_text()
        header, *rows = text.strip().splitlines()[:3]
        # perf_analyzer ends a sweep early when a level does not stabilise: >= 1 row
        assert "Inferences/Second" in header and len(rows) >= 1
        column = header.split(",").index("Inferences/Second")
        assert all(float(r.split(",")[column]) > 0 for r in rows)


# -- the real ensemble ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode"),
    [("two_faces_360p.mp4", "detect"), ("two_faces_360p.mp4", "track"), ("emma720.mp4", "track")],
)
def test_sample_videos_round_trip(ensemble_server, asset_dir, tmp_path, name, mode) -> None:
    source = asset_dir / "video" / name
    with FrameClient(
        ensemble_server.grpc_url, "grpc", model=model_for(mode), outputs=outputs_for(mode, True)
    ) as client:
        process_video(client, source, tmp_path / name, tmp_path / "out.jsonl", progress=False)
    info, out = probe(source), probe(tmp_path / name)
    assert out.frame_count == info.frame_count
    assert abs(float(out.average_rate) - float(info.average_rate)) < 0.01
    with av.open(str(source)) as a, av.open(str(tmp_path / name)) as b:
        duration_in = float(a.duration or 0) / av.time_base
        duration_out = float(b.duration or 0) / av.time_base
        frame_in = next(a.decode(video=0)).to_ndarray(format="rgb24").astype(int)
        frame_out = next(b.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert abs(duration_in - duration_out) <= 1 / float(info.average_rate) + 1e-3
    first = (tmp_path / "out.jsonl").read_text().splitlines()[0]
    faces = json.loads(first)["faces"]
    assert faces, "no face found in the first frame"
    for face in faces:  # the mesh is drawn inside each face box
        x1, y1, x2, y2 = (int(v) for v in face["box"])
        region = np.abs(frame_out[y1:y2, x1:x2] - frame_in[y1:y2, x1:x2]).mean()
        assert region > 5, f"face region {face['box']} barely changed ({region:.1f})"
    if mode == "track":  # every face of every frame keeps the id it was first given
        records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        ids = [{face["track_id"] for face in record["faces"]} for record in records]
        first_ids = {face["track_id"] for face in faces}
        assert first_ids == set(range(1, len(faces) + 1))
        for track_id in first_ids:  # (emma720 also has a half face entering at the edge)
            assert sum(track_id in frame_ids for frame_ids in ids) >= 0.9 * len(ids), ids
        detected = [record["detected"] for record in records]
        assert detected[0] is True and detected.count(False) > 0.5 * len(detected)
        assert all(0.5 <= face["score"] <= 1 for record in records for face in record["faces"])


def test_no_client_shm_left() -> None:
    assert not _client_regions(), "shared memory regions leaked by the clients"


def test_perf_analyzer_drives_the_sequence_ensemble(ensemble_server, asset_dir, tmp_path) -> None:
    from tddfa_clients.perf import PerfError, find_perf_analyzer, perf_environment

    try:
        find_perf_analyzer()
        perf_environment()
    except PerfError as exc:
        pytest.skip(str(exc))
    from tddfa_tools.cli import main

    code = main([
        "perf", "--url", ensemble_server.grpc_url, "--protocol", "grpc", "--mode", "track",
        "--concurrency", "1:1:1", "--frames", "6", "--outputs", "all",
        "--video", str(asset_dir / "video" / "two_faces_360p.mp4"),
        "--measurement-interval", "3000", "--csv", str(tmp_path / "perf.csv"),
        "--stability-percentage", "100", "--max-trials", "10",
    ])  # fmt: skip
    assert code == 0
    header, row = (tmp_path / "perf.csv").read_text().strip().splitlines()[:2]
    assert float(row.split(",")[header.split(",").index("Inferences/Second")]) > 0
    with httpclient.InferenceServerClient(ensemble_server.http_url) as client:
        stats = client.get_inference_statistics("face_tracker")["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) >= 6  # sequences really ran


def _successes(url: str, model: str) -> int:
    with httpclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model)["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


@pytest.mark.parametrize("mode", ["detect", "track"])
def test_perf_asks_for_what_a_video_client_asks(ensemble_server, asset_dir, tmp_path, mode):
    """`tddfa perf` (default --outputs RENDERED) drives the ensemble with real frames and
    runs the renderer but never face_vertices; in track mode whole sequences reach the
    tracker."""
    from tddfa_tools.cli import main

    step = "face_tracker" if mode == "track" else "face_detector"
    before = {m: _successes(ensemble_server.http_url, m) for m in (step, "face_renderer",
                                                                   "face_vertices")}  # fmt: skip
    code = main([
        "perf", "--url", ensemble_server.grpc_url, "--mode", mode, "--concurrency", "2",
        "--frames", "3", "--video", str(asset_dir / "video" / "two_faces_360p.mp4"),
        "--measurement-interval", "2000", "--shared-memory", "system",
        "--csv", str(tmp_path / "perf.csv"),
    ])  # fmt: skip
    assert code == 0
    header, row = (tmp_path / "perf.csv").read_text().strip().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert float(values["Inferences/Second"]) > 0 and float(values["p50 latency"]) > 0
    after = {m: _successes(ensemble_server.http_url, m) for m in before}
    assert after["face_vertices"] == before["face_vertices"]  # VERTICES never asked for
    assert after["face_renderer"] > before["face_renderer"]
    assert after[step] - before[step] >= 3
