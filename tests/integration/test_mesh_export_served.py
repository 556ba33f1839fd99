"""`--mesh` against the real ensembles: the animated glTF of `tddfa video`, the upright
static meshes of `tddfa image` and `tddfa batch`. Every file passes the Khronos
glTF-Validator, trimesh reads it, and the exported vertices, mapped back to image pixels
with the file's own ``to_image``, equal the server's VERTICES of the same frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gltf_scene import GltfScene
from gltf_validator import errors, validate

from tddfa.bfm import load_bfm
from tddfa.config import NUM_EXP, NUM_VERTICES
from tddfa.contract import SEQUENCE_ENSEMBLE

trimesh = pytest.importorskip("trimesh")
NUM_TRIANGLES = 76073
PIXEL_TOLERANCE = 0.5  # exported vertices vs the server's VERTICES of the frame


@pytest.fixture(scope="module")
def server(ensemble_server):
    return ensemble_server


@pytest.fixture(scope="module")
def video(asset_dir: Path) -> Path:
    return asset_dir / "video" / "two_faces_360p.mp4"


@pytest.fixture(scope="module")
def animated(server, video, built_repository, tmp_path_factory) -> Path:
    """`tddfa video IN --mesh anim.glb` (no output video: nothing rendered or encoded)."""
    from tddfa_tools.cli import main

    out = tmp_path_factory.mktemp("mesh")
    mesh = out / "anim.glb"
    code = main(
        ["video", str(video), "--mesh", str(mesh), "--url", server.grpc_url,
         "--bfm", str(built_repository)]
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["anim.glb"], "only the mesh is written"
    return mesh


def _served_sequence(server, video: Path) -> list:
    """The video as one tracked sequence with VERTICES: FrameResult per frame, and its time."""
    from tddfa_clients.triton_client import FrameClient, new_sequence_id
    from tddfa_clients.video import host_frames
    from tddfa_clients.video_io import open_decoder, probe

    info = probe(video)
    outputs = ("FACE_COUNT", "TRACK_IDS", "VERTICES")
    with (
        FrameClient(server.grpc_url, "grpc", model=SEQUENCE_ENSEMBLE, outputs=outputs) as client,
        open_decoder(video, "cpu") as decoder,
    ):
        results = list(client.infer_stream(host_frames(decoder), sequence_id=new_sequence_id()))
    start = results[0][0][1]
    return [(float((pts - start) * info.time_base), result) for (_, pts), result in results]


def test_video_mesh_is_valid_animated_and_equals_the_served_vertices(animated, server, video):
    report = validate(animated)
    assert not errors(report), report["issues"]["messages"]
    assert report["issues"]["numWarnings"] == 0, report["issues"]["messages"]

    scene = trimesh.load_scene(animated, process=False)  # a second reader
    assert scene.geometry, "a mesh per track"
    for geometry in scene.geometry.values():
        assert geometry.vertices.shape == (NUM_VERTICES, 3)
        assert len(geometry.faces) == NUM_TRIANGLES

    sequence = _served_sequence(server, video)
    gltf = GltfScene(animated)
    to_image = np.asarray(gltf.asset_extras()["to_image"])
    compared = 0
    tracks = {int(t) for _, r in sequence for t in r.track_ids}
    assert {f"face_{t}" for t in tracks} == set(scene.geometry), "one mesh per track id"
    for track in tracks:
        pose, mesh = gltf.node(f"face_{track}"), gltf.node(f"face_{track}_mesh")
        shown = [(time, r) for time, r in sequence if track in r.track_ids]
        keys = gltf.keyframes(pose, "rotation")
        np.testing.assert_allclose(keys, [time for time, _ in shown], atol=1e-5)  # per frame
        weights = gltf.sampled(mesh, "weights").reshape(len(keys), -1)[:, :NUM_EXP]
        assert np.ptp(weights, axis=0).max() > 1e-3, "expression weights animate"
        for time, result in shown:
            slot = int(np.flatnonzero(result.track_ids == track)[0])
            posed = gltf.posed_vertices(mesh, np.float32(time))
            pixels = posed @ to_image[:3, :3].T + to_image[:3, 3]
            error = np.abs(pixels.T - result.vertices[slot]).max()
            assert error < PIXEL_TOLERANCE, (track, time, error)
            compared += 1
    assert compared >= len(sequence)


def test_video_and_mesh_together(server, video, built_repository, tmp_path):
    from tddfa_clients.video_io import probe
    from tddfa_tools.cli import main

    out, mesh = tmp_path / "out.mp4", tmp_path / "anim.glb"
    code = main(
        ["video", str(video), str(out), "--mesh", str(mesh), "--url", server.grpc_url,
         "--bfm", str(built_repository / "face_vertices" / "1" / "bfm.npz")]
    )  # fmt: skip
    assert code == 0
    assert probe(out).frame_count == probe(video).frame_count
    report = validate(mesh)
    assert not errors(report), report["issues"]["messages"]
    assert GltfScene(mesh).asset_extras()["frames"] == probe(video).frame_count


def test_video_mesh_refusals(server, video, tmp_path, capsys):
    from tddfa_tools.cli import main

    for extra, message in (
        (["--mesh", str(tmp_path / "a.obj")], "name it .glb"),
        (["--mesh", str(tmp_path / "a.glb"), "--mode", "detect"], "--mode track"),
        ([], "--mesh ANIM.glb"),
    ):
        assert main(["video", str(video), *extra, "--url", server.grpc_url]) == 1
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_image_meshes_open_upright_where_the_faces_are(server, asset_dir, tmp_path):
    from PIL import Image

    from tddfa_clients.triton_client import FrameClient
    from tddfa_tools.cli import main

    source = asset_dir / "images" / "trump_hillary.jpg"
    out, mesh = tmp_path / "out.png", tmp_path / "faces.glb"
    code = main(
        ["image", str(source), str(out), "--mesh", str(mesh), "--url", server.grpc_url,
         "--assets", str(asset_dir)]
    )  # fmt: skip
    assert code == 0
    report = validate(mesh)
    assert not errors(report), report["issues"]["messages"]
    image = np.asarray(Image.open(source).convert("RGB"))
    with FrameClient(server.grpc_url, "grpc", outputs=("FACE_COUNT", "VERTICES")) as client:
        vertices = client.infer(image).vertices
    assert len(vertices) == 2
    scene = trimesh.load_scene(mesh, process=False)
    to_image = np.asarray(GltfScene(mesh).asset_extras()["to_image"])
    bfm_landmarks = _landmark_ids(asset_dir)
    for i, expected in enumerate(vertices):
        name = f"face_{i + 1}"
        transform = scene.graph.get(name)[0]
        points = trimesh.transform_points(scene.geometry[name].vertices, transform)
        pixels = points @ to_image[:3, :3].T + to_image[:3, 3]
        np.testing.assert_allclose(pixels.T, expected, atol=2e-3)
        brows, chin = points[bfm_landmarks[17:27]], points[bfm_landmarks[8]]
        assert brows[:, 1].min() > chin[1], "upright: the brows above the chin (+Y up)"
        assert (scene.geometry[name].face_normals[:, 2] > 0).mean() > 0.6, "facing the viewer"


def _landmark_ids(asset_dir: Path) -> np.ndarray:
    from tddfa_tools.build.exports import bfm_tables

    # the session's export cache (tests/conftest.py's built_repository fills it)
    models_dir = Path(__file__).resolve().parents[2] / "build" / "models"
    return load_bfm(bfm_tables(asset_dir, models_dir)).landmark_vertex_ids


def test_batch_writes_meshes_beside_the_outputs(
    server, asset_dir, video, built_repository, tmp_path
):
    from tddfa_tools.cli import main

    photo = asset_dir / "images" / "JianzhuGuo.jpg"
    out = tmp_path / "out"
    command = ["batch", str(photo), str(video), "--out", str(out), "--mesh",
               "--url", server.grpc_url, "--bfm", str(built_repository), "--assets", str(asset_dir)]  # fmt: skip
    assert main(command) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["JianzhuGuo.glb", "JianzhuGuo.jpg", "manifest.jsonl", "two_faces_360p.glb",
                     "two_faces_360p.mp4"]  # fmt: skip
    for mesh in ("JianzhuGuo.glb", "two_faces_360p.glb"):
        report = validate(out / mesh)
        assert not errors(report), (mesh, report["issues"]["messages"])
    assert GltfScene(out / "two_faces_360p.glb").gltf.animations, "the video's mesh is animated"
    (out / "JianzhuGuo.glb").unlink()  # a missing mesh makes its input not done
    assert main(command) == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    redone = [r["input"] for r in records[2:]]
    assert redone == [str(photo)] and (out / "JianzhuGuo.glb").exists()
