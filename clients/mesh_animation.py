"""``tddfa video --mesh anim.glb``: every tracked face of a video in one animated glTF binary.

The 3DMM is linear, vertices = mean + shape basis x alpha_shp + expression basis x
alpha_exp, then an affine pose: exactly glTF's morph targets plus a node animation. Per
track id the file holds:

- a mesh: base positions = the BFM mean with the track's identity folded in (its mean
  shape coefficients), in metres (BFM micrometres x 1e-6) in the BFM's own frame
  (x to the face's left, +Y up, +Z out of the face); smooth normals; the BFM texture
  coordinates (TEXCOORD_0); one material;
- morph targets: the 10 expression directions (``expression_1..10``: the weights are the
  3DMM's alpha_exp), then, when the track's shape coefficients vary from frame to frame,
  the principal directions of that variation (``identity_1..``), as many as keep every
  frame within :data:`IDENTITY_TOLERANCE_PX` of its exact shape (a bound, usually a few);
  their weights lie in [-1, 1];
- two nodes: ``face_<id>`` holds the pose's translation, outer rotation and scale,
  its child ``face_<id>_mesh`` the inner rotation (tddfa_clients.mesh_pose: the regressor's
  pose is not a rotation times one scale), the morph weights and the visibility;
- keyframes at the timestamps of the frames the track is on (seconds from the first
  frame): LINEAR translation, rotations, scale and weights; the mesh node's scale is 1 on
  those frames and 0 from the first frame it is absent on, with STEP interpolation.

Posed, a face sits in the picture's upright frame (tddfa_clients.mesh_space; metres,
+Y up, 1 pixel = 1 mm) exactly where the server's ``VERTICES`` put it for that frame,
``z -= min z`` per face included; ``asset.extras.tddfa.to_image`` maps the scene back to
image pixels. Derived from the Basel Face Model: academic, non-commercial use only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pygltflib as gl

from tddfa.config import NUM_EXP
from tddfa.params import split_params
from tddfa_clients.gltf import GlbBuilder, unit_normals
from tddfa_clients.mesh import facing_triangles
from tddfa_clients.mesh_model import FaceModel
from tddfa_clients.mesh_pose import image_transforms, split_linear
from tddfa_clients.mesh_space import DEFAULT_SPACE, MeshSpace

LOG = logging.getLogger(__name__)

METRES_PER_BFM_UNIT = 1e-6  # BFM coordinates are micrometres
# A frame's identity may differ from its exact shape coefficients by at most this many
# pixels at any vertex (bound), a tenth of what the eye or the overlay test can tell.
IDENTITY_TOLERANCE_PX = 0.05
_Z_CHUNK = 256  # frames per block when finding each frame's nearest-to-the-back depth


def check_animation_name(path: str | os.PathLike, mode: str = "track") -> None:
    """ValueError unless ``path`` names a .glb and the video is tracked (``mode``)."""
    if Path(path).suffix.lower() != ".glb":
        raise ValueError(f"--mesh {path}: an animated mesh is a glTF binary: name it .glb")
    if mode != "track":
        raise ValueError("--mesh animates tracked faces: use --mode track (the default)")


def open_animation(client, info, model: FaceModel, space: str = DEFAULT_SPACE) -> FaceAnimation:
    """A :class:`FaceAnimation` for a video (``info``: its VideoInfo) sent through
    ``client``, once ``model`` is checked against the BFM the server decodes with."""
    model.check_served(client.served_models()["bfm"])
    return FaceAnimation(model, info.width, info.height, space)


@dataclasses.dataclass
class _Track:
    frames: list[int] = dataclasses.field(default_factory=list)
    params: list[np.ndarray] = dataclasses.field(default_factory=list)
    landmarks: list[np.ndarray] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class TrackSummary:
    track_id: int
    frames: int
    identity_targets: int


@dataclasses.dataclass(frozen=True)
class AnimationSummary:
    path: Path
    frames: int
    tracks: tuple[TrackSummary, ...]


class FaceAnimation:
    """Collects the tracked faces of a video frame by frame, then writes them as glTF.

    ``add`` keeps a few hundred bytes per face and frame (params and landmarks); the
    meshes and the animation are made in ``write``.
    """

    def __init__(self, model: FaceModel, width: int, height: int, space: str = DEFAULT_SPACE):
        self.model = model
        self.space = MeshSpace(space, int(width), int(height))
        self.times: list[float] = []
        self.tracks: dict[int, _Track] = {}
        self._start: float | None = None

    def add(self, seconds: float, result) -> None:
        """One frame's result (a FrameResult with PARAMS, LANDMARKS and TRACK_IDS) shown at
        ``seconds``. A frame not later than the previous one is skipped (keyframe times
        must increase)."""
        if result.track_ids is None:
            raise ValueError(
                "animated meshes need track ids: send the video to the tracking ensemble "
                "(--mode track)"
            )
        if self._start is None:
            self._start = float(seconds)
        time = float(seconds) - self._start
        if self.times and time <= self.times[-1]:
            LOG.debug(
                "frame at %.6f s is not after %.6f s: left out of the mesh", time, self.times[-1]
            )
            return
        frame = len(self.times)
        self.times.append(time)
        for i in range(result.face_count):
            track = self.tracks.setdefault(int(result.track_ids[i]), _Track())
            track.frames.append(frame)
            track.params.append(np.asarray(result.params[i], np.float32))
            track.landmarks.append(np.asarray(result.landmarks[i], np.float32))

    def write(self, path: str | os.PathLike) -> AnimationSummary:
        """Write the .glb to ``path`` as it is (the caller stages it: tddfa.files)."""
        if not self.times:
            raise ValueError("no frame was added: nothing to animate")
        if not self.tracks:
            LOG.warning("no face was tracked in %d frames: %s holds no mesh", len(self.times), path)
        builder = GlbBuilder(extras={"tddfa": self._description()})
        shared = _SharedParts(builder, self.model)
        animation = gl.Animation(name="video")
        roots, summaries = [], []
        for track_id in sorted(self.tracks):
            root, summary = _add_track(
                builder, shared, animation, track_id, self.tracks[track_id], self
            )
            roots.append(root)
            summaries.append(summary)
        if animation.channels:
            builder.add("animations", animation)
        builder.write(path, roots)
        return AnimationSummary(Path(path), len(self.times), tuple(summaries))

    def _description(self) -> dict:
        return {
            **self.space.description(),
            "frames": len(self.times),
            "bfm": self.model.kind,
            "licence": "derived from the Basel Face Model: academic, non-commercial use only",
        }


class _SharedParts:
    """What every track's mesh shares: triangles, texture coordinates, the material and the
    expression targets (the BFM's own directions, in metres)."""

    def __init__(self, builder: GlbBuilder, model: FaceModel):
        bfm = model.bfm
        n = bfm.num_vertices
        self.model = model
        self.mean = bfm.u.reshape(n, 3)  # float32 micrometres, as the server decodes
        self.shape_basis = bfm.w_shp.reshape(n, 3, -1)  # (N, 3, 40)
        self.expression = bfm.w_exp.reshape(n, 3, -1).transpose(2, 0, 1)  # (10, N, 3)
        self.triangles = facing_triangles(self.mean.T, bfm.tri.astype(np.int64))
        self.indices = builder.triangles(self.triangles)
        self.uv = builder.vertices(model.uv)
        self.material = builder.skin_material()
        self.expression_targets = [
            builder.vertices(direction * METRES_PER_BFM_UNIT, positions=True)
            for direction in self.expression
        ]


def _identity(
    alpha_shp: np.ndarray, pixels_per_unit: np.ndarray, model: FaceModel
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The track's identity: mean (40,), directions (k, 40) and weights (F, k) such that
    mean + weights @ directions is every frame's shape within IDENTITY_TOLERANCE_PX.

    The bound: a vertex moves at most ``model.shape_gain`` micrometres per unit of
    coefficient norm, a micrometre is at most ``pixels_per_unit[f]`` pixels on frame f.
    """
    mean = alpha_shp.mean(axis=0)
    deviation = alpha_shp - mean
    if not deviation.any():  # one identity for the whole track
        return mean, np.zeros((0, len(mean))), np.zeros((len(alpha_shp), 0))
    u, s, vt = np.linalg.svd(deviation, full_matrices=False)
    for k in range(len(s) + 1):
        residual = deviation - (u[:, :k] * s[:k]) @ vt[:k]
        error = np.linalg.norm(residual, axis=1) * pixels_per_unit * model.shape_gain
        if error.max() <= IDENTITY_TOLERANCE_PX:
            break
    return mean, vt[:k], u[:, :k] * s[:k]


def _nearest_to_back(
    transforms: np.ndarray, base: np.ndarray, targets: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """(F,) min over the vertices of each frame's image-space z (the VERTICES shift).

    transforms (F, 3, 4) model->image; base (N, 3) and targets (K, N, 3) micrometres;
    weights (F, K).
    """
    out = np.empty(len(transforms))
    targets = [np.ascontiguousarray(targets[:, :, axis], np.float32) for axis in range(3)]
    for start in range(0, len(transforms), _Z_CHUNK):
        block = slice(start, start + _Z_CHUNK)
        row = transforms[block, 2, :3].astype(np.float32)  # (B, 3)
        z = row @ base.T  # (B, N)
        for axis in range(3):
            z += (weights[block] * row[:, axis : axis + 1]).astype(np.float32) @ targets[axis]
        out[block] = z.min(axis=1) + transforms[block, 2, 3]
    return out


def _add_track(builder, shared, animation, track_id, track, recording) -> tuple[int, TrackSummary]:
    params = np.stack(track.params)
    landmarks = np.stack(track.landmarks)
    _, alpha_shp, alpha_exp = split_params(params.astype(np.float64))
    transforms = image_transforms(params, landmarks, recording.model.bfm)  # (F, 3, 4)
    pixels_per_unit = np.linalg.norm(transforms[:, :, :3], ord=2, axis=(1, 2))
    mean, directions, identity_weights = _identity(alpha_shp, pixels_per_unit, shared.model)
    base = shared.mean + shared.shape_basis @ mean.astype(np.float32)  # (N, 3) micrometres
    identity = np.einsum("nak,jk->jna", shared.shape_basis, directions.astype(np.float32))
    reach = np.abs(identity_weights).max(axis=0) if len(directions) else np.zeros(0)
    reach = np.where(reach > 0, reach, 1.0)  # weights in [-1, 1]
    identity *= reach[:, None, None]
    identity_weights = identity_weights / reach
    weights = np.concatenate([alpha_exp, identity_weights], axis=1)  # (F, 10 + k)
    targets = np.concatenate([shared.expression, identity], axis=0)  # (10 + k, N, 3)

    # world pose: the picture's frame after the image map with VERTICES' depth shift
    world = recording.space.from_image()
    shifted = transforms.copy()
    shifted[:, 2, 3] -= _nearest_to_back(transforms, base, targets, weights)
    linear = world[:3, :3] @ shifted[:, :, :3] / METRES_PER_BFM_UNIT
    translation = shifted[:, :, 3] @ world[:3, :3].T + world[:3, 3]
    outer, scale, inner = split_linear(linear)

    positions = base * METRES_PER_BFM_UNIT
    attributes = gl.Attributes(
        POSITION=builder.vertices(positions, positions=True),
        NORMAL=builder.vertices(unit_normals(positions, shared.triangles)),
        TEXCOORD_0=shared.uv,
    )
    target_list = [gl.Attributes(POSITION=a) for a in shared.expression_targets] + [
        gl.Attributes(POSITION=builder.vertices(d * METRES_PER_BFM_UNIT, positions=True))
        for d in identity
    ]
    names = [f"expression_{i + 1}" for i in range(NUM_EXP)]
    names += [f"identity_{i + 1}" for i in range(len(directions))]
    mesh = builder.add(
        "meshes",
        gl.Mesh(
            name=f"face_{track_id}",
            primitives=[
                gl.Primitive(
                    attributes=attributes,
                    indices=shared.indices,
                    material=shared.material,
                    targets=target_list,
                )
            ],
            weights=[float(w) for w in weights[0]],
            extras={"targetNames": names},
        ),
    )
    mesh_node = builder.add(
        "nodes",
        gl.Node(name=f"face_{track_id}_mesh", mesh=mesh, rotation=_floats(inner[0])),
    )
    pose_node = builder.add(
        "nodes",
        gl.Node(
            name=f"face_{track_id}",
            translation=_floats(translation[0]),
            rotation=_floats(outer[0]),
            scale=_floats(scale[0]),
            children=[mesh_node],
        ),
    )

    times = np.asarray(recording.times)[track.frames].astype(np.float32)
    keys = builder.accessor(times, bounds=True)
    channels = [
        (pose_node, "translation", translation),
        (pose_node, "rotation", outer),
        (pose_node, "scale", scale),
        (mesh_node, "rotation", inner),
        (mesh_node, "weights", weights.reshape(-1)),
    ]
    for node, path, values in channels:
        _channel(builder, animation, node, path, keys, values, gl.ANIM_LINEAR)
    shown = np.zeros(len(recording.times), bool)
    shown[track.frames] = True
    changes = np.flatnonzero(np.diff(shown.astype(np.int8), prepend=-1))  # frame 0 and each change
    visibility = np.repeat(shown[changes, None].astype(np.float32), 3, axis=1)
    step_keys = builder.accessor(np.asarray(recording.times, np.float32)[changes], bounds=True)
    _channel(builder, animation, mesh_node, "scale", step_keys, visibility, gl.ANIM_STEP)
    return pose_node, TrackSummary(track_id, len(track.frames), len(directions))


def _channel(builder, animation, node, path, keys, values, interpolation) -> None:
    output = builder.accessor(np.asarray(values, np.float32))
    animation.samplers.append(
        gl.AnimationSampler(input=keys, output=output, interpolation=interpolation)
    )
    animation.channels.append(
        gl.AnimationChannel(
            sampler=len(animation.samplers) - 1,
            target=gl.AnimationChannelTarget(node=node, path=path),
        )
    )


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(values, np.float32)]
