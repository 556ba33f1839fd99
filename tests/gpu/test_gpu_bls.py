"""The networks as models called through BLS on the GPU (`tddfa build --device gpu --networks
models`, the layout of the onnxruntime/tensorrt flavours): the steps send device tensors to
face_regressor / face_detector and get device tensors back (DLPack, the response asked for on
the instance's GPU). The outputs must equal the in-process GPU build's (same networks, same
precision, same static shapes)."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_client import infer, infer_sequence

PHOTOS = ("emma.jpg", "trump_hillary.jpg", "JianzhuGuo.jpg")
KEYS = ("FACE_COUNT", "FACE_BOXES", "LANDMARKS", "POSE", "PARAMS")


@pytest.mark.parametrize("name", PHOTOS)
def test_bls_build_equals_the_in_process_build(gpu_bls_server, gpu_server, test_images, name):
    got = infer(gpu_bls_server, test_images[name], (*KEYS, "RENDERED"))
    want = infer(gpu_server, test_images[name], (*KEYS, "RENDERED"))
    for key in KEYS:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=0.05, err_msg=key)
    # Two server processes may pick other cuDNN algorithms: the last bits of a box can move a
    # ROI by a pixel, and a mesh edge with it. Colours must agree; edge pixels may differ.
    diff = np.abs(got["RENDERED"].astype(int) - want["RENDERED"].astype(int)).max(axis=-1)
    off = (diff > 2).mean()
    largest = {k: float(np.abs(got[k] - want[k]).max()) for k in KEYS}
    assert off < 0.002, f"{off:.3%} of pixels > 2 levels off (max {diff.max()}); {largest}"


def test_bls_sequence_equals_the_in_process_build(gpu_bls_server, gpu_server, test_images):
    """tddfa_track: the tracker detects through the face_detector model and checks tracked
    crops with it (each crop a uint8 frame: BlsDetector.face_scores)."""
    image = test_images["trump_hillary.jpg"]
    outputs = (*KEYS, "TRACK_IDS", "DETECTED")
    runs = {
        label: infer_sequence(url, image, outputs, frames=4, sequence_id=4343)
        for label, url in (("bls", gpu_bls_server), ("in-process", gpu_server))
    }
    for got, want in zip(runs["bls"], runs["in-process"], strict=True):
        np.testing.assert_array_equal(got["DETECTED"], want["DETECTED"])
        np.testing.assert_array_equal(got["TRACK_IDS"], want["TRACK_IDS"])
        for key in ("FACE_COUNT", "LANDMARKS", "POSE", "PARAMS"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=0.05, err_msg=key)
        # tracked scores: the served detector on the crop padded into its canvas
        np.testing.assert_allclose(got["FACE_BOXES"][:, 4], want["FACE_BOXES"][:, 4], atol=5e-3)
