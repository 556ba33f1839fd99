"""The steps in one process on the GPU (tddfa.pipeline with CuPy frames): every output
stays a CuPy array, and the results match the CPU ensemble within the fp16 tolerances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def gpu_pipeline(gpu_repository: Path):
    from tddfa.pipeline import Pipeline

    pipeline = Pipeline(gpu_repository, device="cuda:0")
    yield pipeline
    pipeline.close()


@pytest.mark.parametrize("name", ["emma.jpg", "trump_hillary.jpg", "JianzhuGuo.jpg"])
def test_in_process_gpu_pipeline(gpu_pipeline, name, test_images, cpu_expected):
    import cupy

    outputs = gpu_pipeline(cupy.asarray(test_images[name]))
    for key, value in outputs.items():
        assert isinstance(value, cupy.ndarray), f"{key} left the GPU ({type(value).__name__})"
    count = int(cpu_expected[f"{name}:FACE_COUNT"][0])
    assert int(outputs["FACE_COUNT"][0, 0]) == count
    landmarks = cupy.asnumpy(outputs["LANDMARKS"][0, :count, :2])
    error = np.abs(landmarks - cpu_expected[f"{name}:LANDMARKS"][:count, :2])
    assert error.max() <= 2.0, f"landmarks differ by up to {error.max():.3f} px"


def test_batch_of_frames(gpu_pipeline, test_images):
    """A batch of 4 equal frames gives 4 equal results (dynamic batching's shape)."""
    import cupy

    frame = cupy.asarray(test_images["trump_hillary.jpg"])
    outputs = gpu_pipeline(cupy.stack([frame] * 4))
    counts = cupy.asnumpy(outputs["FACE_COUNT"][:, 0])
    assert counts.tolist() == [2, 2, 2, 2]
    landmarks = cupy.asnumpy(outputs["LANDMARKS"])
    assert np.abs(landmarks - landmarks[:1]).max() < 1e-3
