"""FrameClient's CUDA shared memory mode, without a GPU: tritonclient's
``cuda_shared_memory`` module and the server are replaced by fakes that keep regions in
host memory and log every call, so the create -> register -> use -> unregister -> destroy
order, slot reuse, output placement and error paths are checked here. The real CUDA path
is exercised by tests/integration/test_cuda_shm_client.py (skipped without CUDA).
"""

from __future__ import annotations

import concurrent.futures
import sys
import types

import numpy as np
import pytest
import tritonclient.utils

from tddfa_clients import triton_client
from tddfa_clients.triton_client import ClientError, FrameClient

OUTPUTS = {  # name: (datatype, shape without batch; -1 = the frame's dims)
    "RENDERED": ("UINT8", (-1, -1, 3)),
    "FACE_COUNT": ("INT32", (1,)),
    "FACE_BOXES": ("FP32", (2, 5)),
    "LANDMARKS": ("FP32", (2, 3, 68)),
    "POSE": ("FP32", (2, 3)),
    "PARAMS": ("FP32", (2, 62)),
}
BOX = np.array([1.5, 2.5, 3.5, 4.5, 0.9], np.float32)


class FakeRegion:
    def __init__(self, name: str, size: int, device_id: int):
        self.name, self.size, self.device_id = name, size, device_id
        self.data = np.zeros(size, np.uint8)


class FakeCudaShm(types.ModuleType):
    """Stands in for tritonclient.utils.cuda_shared_memory; regions live in host memory."""

    def __init__(self, log: list):
        super().__init__("tritonclient.utils.cuda_shared_memory")
        self.log = log
        self.live: list[FakeRegion] = []

    def create_shared_memory_region(self, name, size, device_id):
        self.log.append(("create", name))
        region = FakeRegion(name, size, device_id)
        self.live.append(region)
        return region

    def get_raw_handle(self, region):
        return f"handle:{region.name}".encode()

    def set_shared_memory_region(self, region, values):
        assert all(isinstance(v, np.ndarray) for v in values)
        self.log.append(("write_host", region.name))
        self._write(region, np.concatenate([v.reshape(-1).view(np.uint8) for v in values]))

    def set_shared_memory_region_from_dlpack(self, region, values):
        self.log.append(("write_dlpack", region.name))
        self._write(region, np.concatenate([v.host.reshape(-1) for v in values]))

    def _write(self, region, flat):
        assert region in self.live, f"write to destroyed region {region.name}"
        region.data[: flat.size] = flat

    def get_contents_as_numpy(self, region, dtype, shape):
        self.log.append(("read", region.name))
        return region.data[: int(np.prod(shape))].view(dtype).reshape(shape).copy()

    def destroy_shared_memory_region(self, region):
        self.log.append(("destroy", region.name))
        self.live.remove(region)


class FakeDeviceArray:
    """A 'CUDA' uint8 image: DLPack device type 2, data kept in ``host`` for the fake."""

    def __init__(self, host: np.ndarray):
        self.host = host
        self.dtype, self.ndim, self.shape = host.dtype, host.ndim, host.shape

    def __dlpack_device__(self):
        return (2, 0)


class FakeServer:
    """The bits of a Triton client the FrameClient uses; answers like a stand-in ensemble
    (RENDERED = 255 - IMAGE, one face) reading and writing the fake CUDA regions."""

    def __init__(self, shm: FakeCudaShm, fail_register: bool = False):
        self.shm = shm
        self.fail_register = fail_register
        self.registered: dict[str, FakeRegion] = {}

    # tritonclient client methods
    def register_cuda_shared_memory(self, name, raw_handle, device_id, byte_size):
        if self.fail_register:
            raise tritonclient.utils.InferenceServerException(
                "failed to register CUDA shared memory region: invalid args"
            )
        region = next(r for r in self.shm.live if r.name == name)
        assert raw_handle == f"handle:{name}".encode() and byte_size == region.size
        self.shm.log.append(("register", name))
        self.registered[name] = region

    def unregister_cuda_shared_memory(self, name):
        self.shm.log.append(("unregister", name))
        del self.registered[name]

    def infer(self, inputs, outputs):
        params = inputs[0]._get_tensor().parameters
        region = self.registered[params["shared_memory_region"].string_param]
        self.shm.log.append(("infer_input", region.name))
        shape = tuple(inputs[0].shape())
        image = region.data[: int(np.prod(shape))].reshape(shape)
        values = {
            "RENDERED": 255 - image,
            "FACE_COUNT": np.ones((1, 1), np.int32),
            "FACE_BOXES": np.stack([BOX, np.zeros(5, np.float32)])[None],
            "LANDMARKS": np.full((1, 2, 3, 68), 7, np.float32),
            "POSE": np.full((1, 2, 3), 5, np.float32),
            "PARAMS": np.full((1, 2, 62), 3, np.float32),
        }
        shapes = {}
        for requested in outputs:
            name = requested.name()
            p = requested._get_tensor().parameters
            out = self.registered[p["shared_memory_region"].string_param]
            offset = p["shared_memory_offset"].int64_param
            raw = np.ascontiguousarray(values[name]).reshape(-1).view(np.uint8)
            assert raw.size == p["shared_memory_byte_size"].int64_param
            out.data[offset : offset + raw.size] = raw
            shapes[name] = values[name].shape
        return shapes


class FakeProtocol:
    """Replaces triton_client._Protocol."""

    server: FakeServer

    def __init__(self, protocol, url, concurrency, timeout):
        import tritonclient.grpc as module

        self.name, self.module, self.client = protocol, module, self.server

    def model_metadata(self, model):
        return {
            "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}],
            "outputs": [
                {"name": n, "datatype": d, "shape": [-1, *s]} for n, (d, s) in OUTPUTS.items()
            ],
        }

    def model_config(self, model):
        return {"max_batch_size": 8}

    def output_shape(self, result, name):
        return result[name]

    def shared_memory(self, call, *args):
        return getattr(self.client, call)(*args)

    def submit(self, model, inputs, outputs):
        future = concurrent.futures.Future()
        future.set_result(self.server.infer(inputs, outputs))
        return future

    def close(self):
        pass


@pytest.fixture
def fake(monkeypatch):
    """Install the fakes; returns the FakeCudaShm (its .log is the call log)."""
    log: list = []
    shm = FakeCudaShm(log)
    monkeypatch.setitem(sys.modules, "tritonclient.utils.cuda_shared_memory", shm)
    monkeypatch.setattr(tritonclient.utils, "cuda_shared_memory", shm, raising=False)
    FakeProtocol.server = FakeServer(shm)
    monkeypatch.setattr(triton_client, "_Protocol", FakeProtocol)
    return shm


def frames(count: int, shape=(17, 23, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]


def lifecycle_ok(log: list) -> None:
    """Per region name, strictly: create, register, uses..., unregister, destroy (repeatable);
    every region ends destroyed."""
    state: dict[str, str] = {}
    allowed = {
        "create": ("destroyed",),
        "register": ("created",),
        "unregister": ("registered",),
        "destroy": ("unregistered", "created"),  # created: a failed register
    }
    after = {"create": "created", "register": "registered", "unregister": "unregistered",
             "destroy": "destroyed"}  # fmt: skip
    for event, name in log:
        current = state.get(name, "destroyed")
        if event in allowed:
            assert current in allowed[event], (name, event, current)
            state[name] = after[event]
        else:  # a use: only while registered
            assert current == "registered", (name, event, current)
    assert all(s == "destroyed" for s in state.values()), state


def test_stream_results_and_region_reuse(fake):
    images = frames(7, (41, 53, 3))  # 6519 bytes: more than the 4096-byte probe region
    with FrameClient("localhost:8001", "grpc", in_flight=3, shared_memory="cuda") as client:
        assert client.shared_memory_kind == "cuda"
        results = list(client.infer_stream(enumerate(images)))
        live_during = len(fake.live)
    assert [k for k, _ in results] == list(range(7))
    for (_, result), image in zip(results, images, strict=True):
        np.testing.assert_array_equal(result.rendered, 255 - image)
        assert result.face_count == 1
        np.testing.assert_array_equal(result.boxes, BOX[None])
        assert result.landmarks.shape == (1, 3, 68) and (result.landmarks == 7).all()
        assert (result.pose == 5).all() and (result.params == 3).all()
    assert live_during == 6  # one input and one output region per in-flight slot
    assert fake.live == []  # all destroyed on close
    lifecycle_ok(fake.log)
    creates = [name for event, name in fake.log if event == "create"]
    # the probe's small region of slot 0 is replaced once; then every region is reused
    assert len(creates) == 7, creates
    assert not any(event == "write_dlpack" for event, _ in fake.log)


def test_output_offsets_are_aligned(fake, monkeypatch):
    offsets = []
    original = FakeServer.infer

    def spy(self, inputs, outputs):
        offsets.extend(
            o._get_tensor().parameters["shared_memory_offset"].int64_param for o in outputs
        )
        return original(self, inputs, outputs)

    monkeypatch.setattr(FakeServer, "infer", spy)
    with FrameClient("localhost", "grpc", in_flight=1, shared_memory="cuda") as client:
        client.infer(frames(1)[0])  # 17*23*3 bytes: odd, the next offset must be padded
    assert offsets and all(o % triton_client.CUDA_ALIGNMENT == 0 for o in offsets)


def test_device_array_is_written_through_dlpack(fake):
    image = frames(1)[0]
    with FrameClient("localhost", "grpc", in_flight=2, shared_memory="cuda") as client:
        result = client.infer(FakeDeviceArray(image))
    np.testing.assert_array_equal(result.rendered, 255 - image)
    events = [event for event, _ in fake.log]
    assert "write_dlpack" in events and "write_host" not in events


def test_device_array_without_cuda_mode_is_refused(fake):
    with (
        FrameClient("localhost", "grpc", shared_memory="none") as client,
        pytest.raises(ValueError, match="shared_memory='cuda'"),
    ):
        client.infer(FakeDeviceArray(frames(1)[0]))


def test_wrong_dtype_is_refused(fake):
    with (
        FrameClient("localhost", "grpc", shared_memory="cuda") as client,
        pytest.raises(ValueError, match="uint8"),
    ):
        client.infer(np.zeros((8, 8, 3), np.float32))


def test_register_failure_destroys_the_region_and_names_the_fix(fake):
    FakeProtocol.server.fail_register = True
    with pytest.raises(ClientError, match="server must run on this host with a GPU"):
        FrameClient("localhost", "grpc", shared_memory="cuda")
    assert fake.live == []
    assert [e for e, _ in fake.log] == ["create", "destroy"]


def test_remote_server_is_refused(fake):
    with pytest.raises(ClientError, match="same host|on this host"):
        FrameClient("203.0.113.7:8001", "grpc", shared_memory="cuda")
    assert fake.log == []


def test_missing_cuda_python_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.utils.cuda_shared_memory", None)
    FakeProtocol.server = FakeServer(FakeCudaShm([]))
    monkeypatch.setattr(triton_client, "_Protocol", FakeProtocol)
    with pytest.raises(ClientError, match="cuda-python"):
        FrameClient("localhost", "grpc", shared_memory="cuda")


def test_rendered_on_device_needs_cuda_mode():
    with pytest.raises(ValueError, match="shared_memory='cuda'"):
        FrameClient("localhost", "grpc", shared_memory="system", rendered_on_device=True)
