"""Still images in the clients: EXIF orientation, animated images, output names, and
``tddfa image`` writing its image and JSON together or not at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tddfa_clients.image import ImageError, output_format, process_image, read_image
from tddfa_clients.triton_client import FrameResult


def _pattern(height: int = 40, width: int = 60) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, : width // 3] = (255, 0, 0)  # a red block in the top-left
    return image


# EXIF Orientation value -> what a viewer sees, from the stored pixels (TIFF 6.0 / EXIF 2.3)
EXIF_VIEW = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # stored sideways, shown turned 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(EXIF_VIEW))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    stored = _pattern()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"  # lossless, so the comparison is exact
    Image.fromarray(stored).save(path, exif=exif)
    np.testing.assert_array_equal(read_image(path), EXIF_VIEW[orientation](stored))


@pytest.mark.parametrize("suffix", [".gif", ".png", ".webp"])
def test_animated_images_are_refused_with_the_command_to_use(tmp_path: Path, suffix) -> None:
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 128, 255)]
    path = tmp_path / f"anim{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)
    with pytest.raises(ImageError, match=rf"animated .* with 3 frames.*tddfa video anim{suffix}"):
        read_image(path)


def test_a_single_frame_gif_is_an_image(tmp_path: Path) -> None:
    Image.fromarray(_pattern()).save(tmp_path / "still.gif")
    assert read_image(tmp_path / "still.gif").shape == (40, 60, 3)


@pytest.mark.parametrize("name", ["out.gif", "out", "out.JPG.txt"])
def test_unknown_output_names_are_refused_before_any_work(name: str) -> None:
    with pytest.raises(ImageError, match="name the output .jpeg or .jpg or .png"):
        output_format(Path(name))


class _Client:
    """Stands in for FrameClient: answers with the image inverted and one face."""

    def __init__(self):
        self.calls = 0

    def infer(self, image):
        self.calls += 1
        boxes = np.array([[1, 2, 3, 4, 0.9]], np.float32)
        return FrameResult(
            255 - image, 1, boxes, np.zeros((1, 3, 68), np.float32),
            np.zeros((1, 3), np.float32), np.zeros((1, 62), np.float32),
        )  # fmt: skip

    def served_models(self):
        return {"regressor": "mb05", "bfm": "approximate"}


def test_image_and_json_are_written_together(tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    Image.fromarray(_pattern()).save(source)
    out, doc = tmp_path / "out" / "x.png", tmp_path / "out" / "x.json"
    out.parent.mkdir()
    assert process_image(_Client(), source, out, doc) == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.json", "x.png"]
    np.testing.assert_array_equal(read_image(out), 255 - _pattern())


def test_json_into_a_missing_folder_writes_nothing_and_asks_nothing(tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    Image.fromarray(_pattern()).save(source)
    client = _Client()
    with pytest.raises(FileNotFoundError):
        process_image(client, source, tmp_path / "x.png", tmp_path / "missing" / "x.json")
    assert client.calls == 0  # failed before the server was asked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]
