"""A glTF 2.0 scene evaluated at a time, written from the specification for the tests.

pygltflib parses the file; everything else (accessor decoding, keyframe sampling, node
matrices T * R * S, morph targets, the scene graph) is done here, independently of the
exporter, so a test that compares the posed vertices with the server's checks the file as
any viewer reads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pygltflib as gl
from scipy.spatial.transform import Rotation, Slerp

_DTYPES = {
    gl.BYTE: np.int8,
    gl.UNSIGNED_BYTE: np.uint8,
    gl.SHORT: np.int16,
    gl.UNSIGNED_SHORT: np.uint16,
    gl.UNSIGNED_INT: np.uint32,
    gl.FLOAT: np.float32,
}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


class GltfScene:
    def __init__(self, path: str | Path):
        self.gltf = gl.GLTF2().load(str(path))
        self.blob = self.gltf.binary_blob()
        self.parents = {
            child: i for i, node in enumerate(self.gltf.nodes) for child in node.children or []
        }

    def accessor(self, index: int) -> np.ndarray:
        """(count, width) or (count,) array of accessor ``index`` (tightly packed views)."""
        a = self.gltf.accessors[index]
        view = self.gltf.bufferViews[a.bufferView]
        width = _WIDTH[a.type]
        start = (view.byteOffset or 0) + (a.byteOffset or 0)
        data = np.frombuffer(self.blob, _DTYPES[a.componentType], a.count * width, start)
        if a.normalized:
            data = data / np.iinfo(data.dtype).max
        return data.reshape(a.count, width) if width > 1 else data

    def node(self, name: str) -> int:
        return next(i for i, n in enumerate(self.gltf.nodes) if n.name == name)

    def _sample(self, node: int, path: str, time: float):
        for animation in self.gltf.animations:
            for channel in animation.channels:
                if channel.target.node == node and channel.target.path == path:
                    sampler = animation.samplers[channel.sampler]
                    keys = self.accessor(sampler.input)
                    values = self.accessor(sampler.output).astype(np.float64)
                    values = values.reshape(len(keys), -1)
                    i = int(np.clip(np.searchsorted(keys, time, "right") - 1, 0, len(keys) - 1))
                    if sampler.interpolation == "STEP" or i == len(keys) - 1 or time <= keys[i]:
                        return values[max(i, 0)] if time >= keys[0] else values[0]
                    s = (time - keys[i]) / (keys[i + 1] - keys[i])
                    if path == "rotation":
                        return Slerp([0, 1], Rotation.from_quat(values[i : i + 2]))(s).as_quat()
                    return (1 - s) * values[i] + s * values[i + 1]
        return None

    def local(self, node: int, time: float) -> np.ndarray:
        n = self.gltf.nodes[node]
        if n.matrix:
            return np.asarray(n.matrix, np.float64).reshape(4, 4).T  # column-major
        t = self._sample(node, "translation", time)
        r = self._sample(node, "rotation", time)
        s = self._sample(node, "scale", time)
        t = np.asarray(n.translation or [0, 0, 0], np.float64) if t is None else t
        r = np.asarray(n.rotation or [0, 0, 0, 1], np.float64) if r is None else r
        s = np.asarray(n.scale or [1, 1, 1], np.float64) if s is None else s
        m = np.eye(4)
        m[:3, :3] = Rotation.from_quat(r).as_matrix() @ np.diag(s)
        m[:3, 3] = t
        return m

    def world(self, node: int, time: float) -> np.ndarray:
        m = self.local(node, time)
        while node in self.parents:
            node = self.parents[node]
            m = self.local(node, time) @ m
        return m

    def posed_vertices(self, node: int, time: float) -> np.ndarray:
        """(N, 3) float64 scene coordinates of ``node``'s mesh at ``time`` (morphed)."""
        n = self.gltf.nodes[node]
        mesh = self.gltf.meshes[n.mesh]
        primitive = mesh.primitives[0]
        positions = self.accessor(primitive.attributes.POSITION).astype(np.float64)
        weights = self._sample(node, "weights", time)
        if weights is None:
            weights = mesh.weights or [0.0] * len(primitive.targets or [])
        for w, target in zip(weights, primitive.targets or [], strict=True):
            index = target["POSITION"] if isinstance(target, dict) else target.POSITION
            positions = positions + w * self.accessor(index)
        m = self.world(node, time)
        return positions @ m[:3, :3].T + m[:3, 3]

    def keyframes(self, node: int, path: str) -> np.ndarray:
        for animation in self.gltf.animations:
            for channel in animation.channels:
                if channel.target.node == node and channel.target.path == path:
                    return self.accessor(animation.samplers[channel.sampler].input)
        return np.zeros(0, np.float32)

    def sampled(self, node: int, path: str) -> np.ndarray:
        """The keyframe values of ``node``'s ``path`` channel, flat."""
        for animation in self.gltf.animations:
            for channel in animation.channels:
                if channel.target.node == node and channel.target.path == path:
                    return self.accessor(animation.samplers[channel.sampler].output).reshape(-1)
        return np.zeros(0, np.float32)

    def asset_extras(self) -> dict:
        """What the exporter states about the file (``asset.extras.tddfa``)."""
        return self.gltf.asset.extras["tddfa"]
