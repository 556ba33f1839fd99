"""A picture of an exported mesh file as a viewer shows it (the README's mesh picture).

The file (.glb, .obj or .ply from ``tddfa image|video|batch --mesh``) is opened with
trimesh, a reader independent of the exporter, which places each mesh by its node
transforms (an animated .glb: the nodes' rest pose, its first frame, without the morph
weights). The scene is turned by ``--yaw`` / ``--pitch`` degrees about its centre, seen
orthographically from +Z (upright files: +Y up, as a glTF viewer opens them) and drawn
with the project's own renderer (shaded, EGL on Mesa llvmpipe, no GPU needed).

  .venv/bin/python -m tddfa_tools.dev.mesh_preview faces.glb anim.glb --out docs/mesh_export.jpg
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
BACKGROUND = (40, 44, 52)


def scene_meshes(path: str | os.PathLike) -> tuple[list[np.ndarray], np.ndarray]:
    """(every mesh's (N, 3) scene coordinates, their shared (T, 3) triangles)."""
    import trimesh

    scene = trimesh.load_scene(path, process=False, split_objects=True)
    meshes, triangles = [], None
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph.get(node)
        geometry = scene.geometry[name]
        meshes.append(trimesh.transform_points(geometry.vertices, transform))
        if triangles is None:
            triangles = np.asarray(geometry.faces)
        elif not np.array_equal(np.sort(triangles, 1), np.sort(np.asarray(geometry.faces), 1)):
            raise ValueError(f"{path}: the meshes do not share one triangulation")
    if not meshes:
        raise ValueError(f"{path}: no mesh in the file")
    return meshes, triangles


def view(meshes: list[np.ndarray], yaw: float, pitch: float, size: int) -> tuple:
    """(F, 3, N) image coordinates (x right, y down, z to the viewer) of the turned scene,
    and the (height, width) of the picture that holds it, its longer side ``size``."""
    points = np.stack(meshes)  # (F, N, 3)
    centre = (points.reshape(-1, 3).max(0) + points.reshape(-1, 3).min(0)) / 2
    a, b = np.radians(yaw), np.radians(pitch)
    turn_y = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    turn_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    turned = (points - centre) @ (turn_x @ turn_y).T
    extent = np.abs(turned[..., :2]).reshape(-1, 2).max(axis=0)  # half width, half height
    scale = size / (2.2 * extent.max())  # a 10 % margin on each side
    width, height = (max(16, round(2.2 * scale * e)) for e in extent)
    x = width / 2 + scale * turned[..., 0]
    y = height / 2 - scale * turned[..., 1]  # +Y up in the scene, down in the picture
    z = scale * (turned[..., 2] - turned[..., 2].min())
    return np.stack([x, y, z], axis=1).astype(np.float32), (height, width)


def render_preview(
    path: str | os.PathLike, yaw: float = 35.0, pitch: float = 10.0, size: int = 640
):
    """(H, W, 3) uint8 RGB picture of the meshes of ``path``, its longer side ``size``."""
    os.environ.setdefault("EGL_PLATFORM", "surfaceless")
    from tddfa.render import MeshRenderer

    meshes, triangles = scene_meshes(path)
    vertices, shape = view(meshes, yaw, pitch, size)
    background = np.empty((*shape, 3), np.uint8)
    background[:] = BACKGROUND
    with MeshRenderer(np.ascontiguousarray(triangles.T), alpha=1.0) as renderer:
        return renderer.render(background, vertices, len(vertices), "shaded")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "meshes", type=Path, nargs="+", help=".glb, .obj or .ply files written by --mesh"
    )
    parser.add_argument("--out", type=Path, required=True, help="picture (.jpg or .png)")
    parser.add_argument("--yaw", type=float, default=35.0, help="turn about +Y, degrees")
    parser.add_argument("--pitch", type=float, default=10.0, help="turn about +X, degrees")
    parser.add_argument("--size", type=int, default=640, help="picture side in pixels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from PIL import Image

    from tddfa.files import atomic_path

    pictures = [render_preview(m, args.yaw, args.pitch, args.size) for m in args.meshes]
    height = max(p.shape[0] for p in pictures)
    picture = np.empty((height, sum(p.shape[1] for p in pictures), 3), np.uint8)
    picture[:] = BACKGROUND
    x = 0
    for p in pictures:  # side by side, centred vertically
        top = (height - p.shape[0]) // 2
        picture[top : top + p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1]
    fmt = "PNG" if args.out.suffix.lower() == ".png" else "JPEG"
    with atomic_path(args.out) as temp:
        Image.fromarray(picture).save(temp, format=fmt, quality=85)
    log.info("%s -> %s", ", ".join(str(m) for m in args.meshes), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
