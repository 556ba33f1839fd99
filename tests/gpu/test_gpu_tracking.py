"""Steady tracking on the GPU build: the tracker's image motion and crops run on the device
(CuPy), its filter on the host; the same targets as on the CPU
(tests/integration/test_steady_tracking.py): jitter <= 40 % of per-frame detection with
no more than 1.1x its spread, still frames equal to per-frame results, and two crossing
faces keep their ids."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from gpu_client import TIMEOUT_S

from tddfa_tools.dev.motion_clip import (
    face_cutout,
    id_switches,
    make_clip,
    make_crossing_clip,
    measure,
)

OUTPUTS = ("FACE_COUNT", "FACE_BOXES", "LANDMARKS", "TRACK_IDS", "DETECTED")
STILL = 15


def run(url: str, frames, model: str, sequence_id: int = 0) -> list[dict[str, np.ndarray]]:
    """Each frame's outputs; ``tddfa_track`` gets the frames as one sequence."""
    names = OUTPUTS if model == "tddfa_track" else OUTPUTS[:3]
    results = []
    with grpcclient.InferenceServerClient(url) as client:
        for i, frame in enumerate(frames):
            tensor = grpcclient.InferInput("IMAGE", [1, *frame.shape], "UINT8")
            tensor.set_data_from_numpy(np.ascontiguousarray(frame[None]))
            sequence = {}
            if model == "tddfa_track":
                sequence = {
                    "sequence_id": sequence_id,
                    "sequence_start": i == 0,
                    "sequence_end": i == len(frames) - 1,
                }
            result = client.infer(
                model,
                [tensor],
                outputs=[grpcclient.InferRequestedOutput(n) for n in names],
                client_timeout=TIMEOUT_S,
                **sequence,
            )
            results.append({n: result.as_numpy(n)[0] for n in names})
    return results


@pytest.mark.parametrize("amplitude", [8.0, 30.0], ids=["slow", "fast"])
def test_steady_tracking_on_the_gpu(gpu_server, test_images, amplitude):
    clip = make_clip(test_images["JianzhuGuo.jpg"], frames=90, still=STILL, amplitude=amplitude)
    per_frame = run(gpu_server, clip.frames, "tddfa")
    tracked = run(gpu_server, clip.frames, "tddfa_track", sequence_id=4400 + int(amplitude))
    assert {int(o["TRACK_IDS"][0]) for o in tracked} == {1}
    base = measure(np.stack([o["LANDMARKS"][0] for o in per_frame]), clip.affines)
    steady = measure(np.stack([o["LANDMARKS"][0] for o in tracked]), clip.affines)
    assert steady.jitter <= 0.4 * base.jitter, (steady, base)
    assert steady.spread <= 1.1 * base.spread, (steady, base)
    for got, want in zip(tracked[:STILL], per_frame[:STILL], strict=True):
        gap = np.linalg.norm(got["LANDMARKS"][0, :2] - want["LANDMARKS"][0, :2], axis=0)
        assert gap.max() <= 1.0, f"tracked landmarks {gap.max():.2f} px from per-frame ones"


def test_crossing_faces_keep_their_ids_on_the_gpu(gpu_server, test_images):
    faces = [
        face_cutout(test_images["JianzhuGuo.jpg"], np.array([120, 93, 291, 312])),
        face_cutout(test_images["trump_hillary.jpg"], np.array([229, 103, 466, 391])),
    ]
    clip = make_crossing_clip(faces, frames=90, vertical_gap=30.0)
    results = run(gpu_server, clip.frames, "tddfa_track", sequence_id=4500)
    counts = [int(o["FACE_COUNT"][0]) for o in results]
    ids = [[int(i) for i in o["TRACK_IDS"][:n]] for o, n in zip(results, counts, strict=True)]
    centres = [o["LANDMARKS"][:n, :2].mean(axis=2) for o, n in zip(results, counts, strict=True)]
    result = id_switches(ids, centres, clip)
    assert result["switches"] == 0 and result["duplicates"] == 0, result
    assert result["ids"] == [[1], [2]], result
