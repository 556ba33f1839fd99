"""FrameClient with CUDA shared memory against the real ensemble (needs a GPU and CuPy, which
makes the regions; skipped otherwise).

The CUDA path must give the same results as the network path, from a host frame and
from a frame already on the GPU (written device to device through DLPack), and leave no
region registered with the server.
"""

from __future__ import annotations

import numpy as np
import pytest

from tddfa_clients.triton_client import FrameClient

pytestmark = [pytest.mark.server, pytest.mark.gpu]


@pytest.fixture(scope="module")
def cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy is needed for CUDA arrays")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as exc:  # noqa: BLE001  (no driver: the reason is in the message)
        pytest.skip(f"no CUDA device: {exc}")
    return cupy


def _same(got, want) -> None:
    assert got.face_count == want.face_count
    for key in ("boxes", "landmarks", "pose", "params"):
        np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)


def test_cuda_shared_memory_matches_network_path(cupy, ensemble_server, test_images):
    image = test_images["emma.jpg"]
    url = ensemble_server.grpc_url
    with FrameClient(url, "grpc", shared_memory="none") as client:
        want = client.infer(image)
    with FrameClient(url, "grpc", in_flight=2, shared_memory="cuda") as client:
        assert client.shared_memory_kind == "cuda"
        from_host = client.infer(image)
        from_device = client.infer(cupy.asarray(image))
    with FrameClient(url, "grpc", shared_memory="cuda", rendered_on_device=True) as client:
        on_device = client.infer(cupy.asarray(image))
    for got in (from_host, from_device, on_device):
        _same(got, want)
    np.testing.assert_array_equal(from_host.rendered, want.rendered)
    np.testing.assert_array_equal(from_device.rendered, want.rendered)
    assert isinstance(on_device.rendered, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(on_device.rendered), want.rendered)

    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as admin:
        status = admin.get_cuda_shared_memory_status(as_json=True)
    assert not status.get("regions"), f"regions left registered: {status}"
