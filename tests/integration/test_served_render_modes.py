"""Render modes through the real `tddfa` ensemble: the request parameter ``render_mode``
reaches face_renderer over HTTP and gRPC (Triton forwards an ensemble request's parameters
to its steps), requests in different modes batched together each get their own mode, an
unknown mode is refused with the valid ones named, and the pictures equal the in-process
face_renderer step given the ensemble's own outputs."""

from __future__ import annotations

import concurrent.futures
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from server import model_counts
from tritonclient.utils import InferenceServerException

from tddfa.contract import (
    RENDER_MODE_PARAMETER,
    RENDER_MODES,
    STATELESS_ENSEMBLE,
    UV_MODE,
)

PROTOCOLS = {"http": httpclient, "grpc": grpcclient}
OUTPUTS = ("RENDERED", "FACE_COUNT", "FACE_BOXES", "PARAMS")


@pytest.fixture(scope="module")
def render_repository(built_repository: Path, asset_dir: Path, tmp_path_factory) -> Path:
    """The built repository with render_assets.npz in face_renderer's version folder (a copy
    of links, so that the session's other server is not touched)."""
    from tddfa_tools.build.render_assets import build_render_assets

    copy = tmp_path_factory.mktemp("render") / "model_repository"
    shutil.copytree(built_repository, copy, symlinks=True)
    assets = copy / "face_renderer" / "1" / "render_assets.npz"
    if not assets.exists():
        build_render_assets(asset_dir, assets, download=False)
    return copy


@pytest.fixture(scope="module")
def server(triton_servers, render_repository):
    return triton_servers.get(render_repository)


def url(server, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


def infer(address: str, protocol: str, image: np.ndarray, mode: str | None) -> dict:
    module = PROTOCOLS[protocol]
    with module.InferenceServerClient(address) as client:
        tensor = module.InferInput("IMAGE", [1, *image.shape], "UINT8")
        tensor.set_data_from_numpy(image[None])
        requested = [module.InferRequestedOutput(name) for name in OUTPUTS]
        parameters = None if mode is None else {RENDER_MODE_PARAMETER: mode}
        result = client.infer(
            STATELESS_ENSEMBLE, [tensor], outputs=requested, parameters=parameters
        )
        return {name: result.as_numpy(name)[0] for name in OUTPUTS}


@pytest.fixture(scope="module")
def step(render_repository):
    from tddfa.render.step import build_render_step

    step = build_render_step(render_repository / "face_renderer" / "1")
    yield step
    step.close()


def expected(step, image: np.ndarray, outputs: dict, mode: str) -> np.ndarray:
    """The in-process face_renderer step on the ensemble's own outputs."""
    from tddfa.render.step import inputs_from_outputs

    batched = {name: outputs[name][None] for name in ("PARAMS", "FACE_BOXES", "FACE_COUNT")}
    inputs = inputs_from_outputs(batched, image[None])
    return step.run(inputs, [{RENDER_MODE_PARAMETER: mode}])["RENDERED"][0]


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_every_mode_over_the_wire(server, step, test_images, protocol):
    image = test_images["trump_hillary.jpg"]
    default = infer(url(server, protocol), protocol, image, None)
    assert int(default["FACE_COUNT"][0]) == 2
    pictures = {}
    for mode in RENDER_MODES:
        got = infer(url(server, protocol), protocol, image, mode)
        want = expected(step, image, got, mode)
        assert got["RENDERED"].shape == want.shape, mode
        diff = np.abs(got["RENDERED"].astype(int) - want.astype(int)).max(axis=-1)
        assert diff.mean() < 0.05 and (diff > 1).mean() < 1e-3, (mode, diff.mean())
        pictures[mode] = got["RENDERED"]
    np.testing.assert_array_equal(default["RENDERED"], pictures["shaded"])
    k = default["PARAMS"].shape[0]
    side = step.renderer.uv_size
    assert pictures[UV_MODE].shape == (side, k * side, 3)
    frames = [m for m in RENDER_MODES if m != UV_MODE]
    for i, a in enumerate(frames):  # every mode draws something of its own
        for b in frames[i + 1 :]:
            assert (pictures[a] != pictures[b]).any(), (a, b)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_unknown_mode_is_refused(server, test_images, protocol):
    with pytest.raises(InferenceServerException) as error:
        infer(url(server, protocol), protocol, test_images["JianzhuGuo.jpg"], "sketch")
    message = str(error.value)
    assert "unknown render_mode 'sketch'" in message
    assert all(mode in message for mode in RENDER_MODES)
    ok = infer(url(server, protocol), protocol, test_images["JianzhuGuo.jpg"], "depth")
    assert int(ok["FACE_COUNT"][0]) == 1, "the server keeps serving"


def test_concurrent_requests_in_different_modes(server, test_images):
    """Requests in flight together are batched by face_renderer's dynamic batcher (Triton's
    statistics show fewer executions than requests) and each keeps its own mode."""
    image = test_images["trump_hillary.jpg"]
    modes = ["depth", "shaded", UV_MODE, "pncc", "landmarks", "shaded", "pose", "depth"] * 2
    alone = {m: infer(server.grpc_url, "grpc", image, m)["RENDERED"] for m in set(modes)}
    inferences, executions = model_counts(server, "face_renderer")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda m: infer(server.grpc_url, "grpc", image, m)["RENDERED"], modes)
        )
    after = model_counts(server, "face_renderer", inferences + len(modes))
    assert after[0] - inferences == len(modes)
    assert after[1] - executions < len(modes), "no face_renderer execution held two requests"
    for mode, got in zip(modes, results, strict=True):
        assert got.shape == alone[mode].shape, mode
        diff = np.abs(got.astype(int) - alone[mode].astype(int)).max(axis=-1)
        assert (diff > 1).mean() < 1e-4, mode


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_image_client_renders_a_mode_and_writes_the_meshes(server, asset_dir, tmp_path, suffix):
    """`tddfa image IN OUT --render MODE --mesh FILE --mesh-space image`: the mode's picture,
    and one mesh file holding every face (one object / object id each) in VERTICES' pixels,
    read back with trimesh."""
    trimesh = pytest.importorskip("trimesh")
    from PIL import Image

    from tddfa_tools.cli import main

    source = asset_dir / "images" / "trump_hillary.jpg"
    out, mesh = tmp_path / "out.png", tmp_path / f"faces{suffix}"
    code = main(
        ["image", str(source), str(out), "--render", "depth", "--mesh", str(mesh),
         "--mesh-space", "image", "--url", server.grpc_url, "--protocol", "grpc",
         "--assets", str(asset_dir)]
    )  # fmt: skip
    assert code == 0
    image = np.asarray(Image.open(source).convert("RGB"))
    served = infer(server.grpc_url, "grpc", image, "depth")
    np.testing.assert_array_equal(np.asarray(Image.open(out)), served["RENDERED"])

    from tddfa_clients.triton_client import FrameClient

    with FrameClient(server.grpc_url, "grpc", outputs=("VERTICES",)) as client:
        vertices = client.infer(image).vertices  # (2, 3, N)
    n = vertices.shape[2]
    if suffix == ".obj":
        scene = trimesh.load_scene(mesh, process=False, split_objects=True)
        assert sorted(scene.geometry) == ["face_1", "face_2"]
        parts = [scene.geometry[name] for name in sorted(scene.geometry)]
        rows = [line.split()[4:7] for line in mesh.read_text().splitlines() if line[:2] == "v "]
        colors = np.rint(np.asarray(rows[:n], float) * 255).astype(int)  # 4-digit fractions
        x = np.clip(np.rint(vertices[0, 0]), 0, image.shape[1] - 1).astype(int)
        y = np.clip(np.rint(vertices[0, 1]), 0, image.shape[0] - 1).astype(int)
        assert np.abs(colors - image[y, x]).max() <= 1
    else:
        whole = trimesh.load(mesh, process=False)
        face_of_vertex = whole.metadata["_ply_raw"]["vertex"]["data"]["object_id"]
        assert sorted(set(face_of_vertex.tolist())) == [1, 2]
        parts = [whole.submesh([np.flatnonzero(np.all(face_of_vertex[whole.faces] == i, 1))],
                               append=True) for i in (1, 2)]  # fmt: skip
        assert len(whole.vertices) == 2 * n
        data = whole.metadata["_ply_raw"]["vertex"]["data"]
        colors = np.stack([data["red"], data["green"], data["blue"]], 1)
        x = np.clip(np.rint(vertices[0, 0]), 0, image.shape[1] - 1).astype(int)
        y = np.clip(np.rint(vertices[0, 1]), 0, image.shape[0] - 1).astype(int)
        np.testing.assert_array_equal(colors[:n], image[y, x])
    for part, face in zip(parts, vertices, strict=True):
        assert len(part.faces) == 76073
        np.testing.assert_allclose(
            np.sort(part.vertices, axis=0), np.sort(face.T, axis=0), atol=2e-3
        )
        assert (part.face_normals[:, 2] > 0).mean() > 0.6, "normals towards the camera"


def test_video_client_refuses_uv_and_draws_a_mode(server, asset_dir, tmp_path, capsys):
    from tddfa_clients.triton_client import FrameClient
    from tddfa_clients.video import process_video
    from tddfa_tools.cli import main

    source = asset_dir / "video" / "two_faces_360p.mp4"
    code = main(
        ["video", str(source), str(tmp_path / "uv.mp4"), "--render", "uv", "--mode", "detect",
         "--url", server.grpc_url]
    )  # fmt: skip
    assert code == 1 and not (tmp_path / "uv.mp4").exists()
    assert "tddfa image --render uv" in capsys.readouterr().err
    with FrameClient(
        server.grpc_url, "grpc", in_flight=4, parameters={RENDER_MODE_PARAMETER: "pose"}
    ) as client:
        stats = process_video(client, source, tmp_path / "pose.mp4", progress=False)
    assert stats.frames == 50 and (tmp_path / "pose.mp4").stat().st_size > 0


def test_render_mode_on_a_tracked_sequence(server, test_images):
    """tddfa_track forwards the sequence's parameters too: its frames come in the mode."""
    from tddfa.contract import SEQUENCE_ENSEMBLE
    from tddfa_clients.triton_client import FrameClient, new_sequence_id

    image = test_images["trump_hillary.jpg"]
    frames = [(i, image) for i in range(3)]
    pictures = {}
    for mode in ("shaded", "depth"):
        with FrameClient(
            server.grpc_url,
            "grpc",
            model=SEQUENCE_ENSEMBLE,
            outputs=("RENDERED", "FACE_COUNT"),
            parameters={RENDER_MODE_PARAMETER: mode},
        ) as client:
            results = list(client.infer_stream(frames, sequence_id=new_sequence_id()))
        pictures[mode] = [r.rendered for _, r in results]
        assert all(r.face_count == 2 for _, r in results)
    stateless = infer(server.grpc_url, "grpc", image, "depth")["RENDERED"]
    drawn = (stateless != image).any(axis=-1)
    for shaded, depth in zip(pictures["shaded"], pictures["depth"], strict=True):
        assert (shaded != depth).any(axis=-1).mean() > 0.5 * drawn.mean()
        # depth pixels are grey where drawn, as the stateless ensemble's
        changed = (depth != image).any(axis=-1)
        assert (depth[changed] == depth[changed][:, :1]).all()
