"""Files and command lines through the real ensemble: EXIF-rotated photos and rotated videos
come back upright with results in display orientation, odd sizes exactly, animated images
refused by `tddfa image` and rendered by `tddfa video`; every mistake is one line, exit 1,
and a failing command writes nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tddfa_clients.image import read_image
from tddfa_clients.video_io import probe
from tddfa_tools.cli import main

pytestmark = pytest.mark.server


def cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def assert_one_line(err: str, *fragments: str) -> None:
    assert "Traceback" not in err, err
    assert sum(line.startswith("tddfa: error:") for line in err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_exif_rotated_photo_gives_upright_results(
    capsys, ensemble_server, good_request, tmp_path
) -> None:
    upright, expected = good_request
    stored = np.rot90(upright, 1)  # the pixels as a camera held sideways stores them
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "sideways.png", exif=exif)
    code, err = cli(
        capsys, "image", tmp_path / "sideways.png", tmp_path / "out.png",
        "--json", tmp_path / "out.json", "--url", ensemble_server.grpc_url,
    )  # fmt: skip
    assert code == 0, err
    document = json.loads((tmp_path / "out.json").read_text())
    height, width = upright.shape[:2]
    assert document["image"] == {"width": width, "height": height}
    assert len(document["faces"]) == expected.count
    boxes = np.array([face["box"] for face in document["faces"]])
    np.testing.assert_allclose(boxes, expected.boxes[:, :4], atol=0.01)  # the same pixels
    assert all(abs(face["pose"]["roll"]) < 30 for face in document["faces"])
    assert read_image(tmp_path / "out.png").shape == upright.shape


def _video(path: Path, frames: list[np.ndarray], rotation: int | None = None) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "12"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _frames(path: Path, count: int) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        out = []
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == count:
                return out
    return out


def test_rotated_video_plays_upright_with_upright_results(
    capsys, ensemble_server, asset_dir, tmp_path
) -> None:
    """A phone video (stored sideways, tagged to be shown turned back) gives the results
    the same video stored upright gives, and plays upright with no rotation tag."""
    upright = _frames(asset_dir / "video" / "two_faces_360p.mp4", 6)
    _video(tmp_path / "upright.mp4", upright)
    _video(tmp_path / "phone.mp4", [np.rot90(f, 1) for f in upright], rotation=-90)
    assert (probe(tmp_path / "phone.mp4").width, probe(tmp_path / "phone.mp4").height) == (
        640, 360,
    )  # fmt: skip
    results = {}
    for name in ("upright", "phone"):
        code, err = cli(
            capsys, "video", tmp_path / f"{name}.mp4", tmp_path / f"{name}_out.mp4",
            "--json", tmp_path / f"{name}.jsonl", "--url", ensemble_server.grpc_url,
        )  # fmt: skip
        assert code == 0, err
        lines = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        results[name] = [json.loads(line)["faces"] for line in lines]
    out = probe(tmp_path / "phone_out.mp4")
    assert (out.width, out.height, out.frame_count) == (640, 360, 6)
    assert out.orientation.is_identity
    assert sum(len(faces) for faces in results["phone"]) > 0
    for turned, straight in zip(results["phone"], results["upright"], strict=True):
        assert len(turned) == len(straight)
        for a, b in zip(turned, straight, strict=True):  # same pixels up to coding loss
            np.testing.assert_allclose(a["box"], b["box"], atol=4)
            assert abs(a["pose"]["roll"] - b["pose"]["roll"]) < 5
    rendered = _frames(tmp_path / "phone_out.mp4", 1)[0].astype(int)
    reference = _frames(tmp_path / "upright_out.mp4", 1)[0].astype(int)
    assert np.abs(rendered - reference).mean() < 4  # the output is upright


def test_odd_sized_video_comes_back_the_same_size(
    capsys, ensemble_server, asset_dir, tmp_path
) -> None:
    frames = [f[:359, 300:941] for f in _frames(asset_dir / "video" / "emma720.mp4", 4)]
    source = tmp_path / "odd.mkv"
    with av.open(str(source), "w") as container:  # FFV1: any size, lossless
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 641, 359, "bgr0"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    code, err = cli(
        capsys, "video", source, tmp_path / "out.mp4", "--url", ensemble_server.grpc_url
    )
    assert code == 0, err
    out = probe(tmp_path / "out.mp4")
    assert (out.width, out.height, out.frame_count) == (641, 359, 4)


def test_animated_gif_is_refused_by_image_and_rendered_by_video(
    capsys, ensemble_server, good_request, tmp_path
) -> None:
    image, _ = good_request
    # three different frames (Pillow merges identical ones)
    small = [Image.fromarray(np.roll(image, 40 * i, axis=1)).resize((320, 180)) for i in range(3)]
    small[0].save(tmp_path / "anim.gif", save_all=True, append_images=small[1:], duration=40)
    code, err = cli(
        capsys, "image", tmp_path / "anim.gif", tmp_path / "out.png",
        "--url", ensemble_server.grpc_url,
    )  # fmt: skip
    assert code == 1
    assert_one_line(err, "animated GIF with 3 frames", "tddfa video anim.gif")
    assert not (tmp_path / "out.png").exists()
    code, err = cli(
        capsys, "video", tmp_path / "anim.gif", tmp_path / "anim.mp4",
        "--url", ensemble_server.grpc_url,
    )  # fmt: skip
    assert code == 0, err
    assert probe(tmp_path / "anim.mp4").frame_count == 3


def test_mistakes_are_one_line_and_write_nothing(
    capsys, ensemble_server, asset_dir, good_request, tmp_path
) -> None:
    photo = asset_dir / "images" / "emma.jpg"
    video = asset_dir / "video" / "two_faces_360p.mp4"
    url = ensemble_server.grpc_url
    cases = [
        (["image", photo, tmp_path / "out.gif", "--url", url], "cannot write .gif"),
        (
            ["image", photo, tmp_path / "out.png", "--json", tmp_path / "no" / "x.json",
             "--url", url],
            f"the output folder {tmp_path / 'no'} does not exist: create it",
        ),
        (
            ["video", video, tmp_path / "out.mp4", "--json", tmp_path / "no" / "x.jsonl",
             "--url", url],
            f"the output folder {tmp_path / 'no'} does not exist: create it",
        ),
        (["video", video, tmp_path / "out.avi", "--url", url], "cannot write .avi video"),
        (["image", tmp_path / "missing.jpg", tmp_path / "out.png", "--url", url], "missing.jpg"),
    ]  # fmt: skip
    for argv, fragment in cases:
        code, err = cli(capsys, *argv)
        assert code == 1, (argv, err)
        assert_one_line(err, fragment)
        assert list(tmp_path.iterdir()) == [], (argv, list(tmp_path.iterdir()))


@pytest.mark.parametrize("command", ["image", "batch"])
def test_wrong_protocol_for_the_port_is_one_line_at_once(
    capsys, ensemble_server, asset_dir, tmp_path, command
) -> None:
    photo = asset_dir / "images" / "emma.jpg"
    start = time.monotonic()
    if command == "image":
        argv = ["image", photo, tmp_path / "out.png", "--url", ensemble_server.http_url]
    else:
        argv = ["batch", photo, "--out", tmp_path / "out", "--url", ensemble_server.http_url]
    code, err = cli(capsys, *argv)  # gRPC is the default protocol: the HTTP port is wrong
    assert code == 1
    assert_one_line(err, "speaks HTTP, not GRPC: pass --protocol http")
    assert time.monotonic() - start < 10  # no retries for 30 s
    assert list(tmp_path.iterdir()) == []
