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
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import tritonclient.utils

from tddfa_clients import cuda_shared_memory, shared_memory, triton_client, video_client, video_io
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

    def write_device(self, region, image):
        """Stands in for CudaSharedMemorySlot._write_device (CuPy on a GPU)."""
        self.log.append(("write_device", region.name))
        self._write(region, image.host.reshape(-1).copy())

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

    in_use_answers = 0  # how many unregister calls answer "currently in use" first

    def unregister_cuda_shared_memory(self, name):
        if self.in_use_answers:
            self.in_use_answers -= 1
            raise tritonclient.utils.InferenceServerException(
                f"Cannot unregister shared memory region '{name}', it is currently in use."
            )
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
    """Replaces triton_client.Transport."""

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

    sequences: list = []  # the SequenceFrame of every submitted request (None outside one)

    def shared_memory(self, call, *args):
        return getattr(self.client, call)(*args)

    def submit(self, model, inputs, outputs, sequence=None, parameters=None):
        """Answered when the result is first asked for: the server reads the input region
        late, as a real one may, so a slot overwritten too early shows."""
        self.sequences.append(sequence)
        return LazyFuture(lambda: self.server.infer(inputs, outputs))

    def close(self):
        pass


class LazyFuture(concurrent.futures.Future):
    def __init__(self, answer):
        super().__init__()
        self._answer = answer

    def result(self, timeout=None):
        if not self.done():
            self.set_result(self._answer())
        return super().result(timeout)


@pytest.fixture
def fake(monkeypatch):
    """Install the fakes; returns the FakeCudaShm (its .log is the call log)."""
    log: list = []
    shm = FakeCudaShm(log)
    monkeypatch.setitem(sys.modules, "tritonclient.utils.cuda_shared_memory", shm)
    monkeypatch.setattr(tritonclient.utils, "cuda_shared_memory", shm, raising=False)
    FakeProtocol.server = FakeServer(shm)
    monkeypatch.setattr(triton_client, "Transport", FakeProtocol)
    monkeypatch.setattr(
        cuda_shared_memory.CudaSharedMemorySlot,
        "_write_device",
        lambda slot, image: shm.write_device(slot.handle("input"), image),
    )
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
    assert not any(event == "write_device" for event, _ in fake.log)


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


def test_device_array_is_copied_device_to_device(fake):
    image = frames(1)[0]
    with FrameClient("localhost", "grpc", in_flight=2, shared_memory="cuda") as client:
        result = client.infer(FakeDeviceArray(image))
    np.testing.assert_array_equal(result.rendered, 255 - image)
    events = [event for event, _ in fake.log]
    assert "write_device" in events and "write_host" not in events


def reused_surface(images):
    """Yields every image through ONE device buffer, overwritten for each frame, the way
    PyNvVideoCodec's SimpleDecoder reuses its output surfaces."""
    surface = FakeDeviceArray(np.zeros_like(images[0]))
    for index, image in enumerate(images):
        surface.host[...] = image
        yield index, surface


def test_reused_decoder_surface_is_copied_before_the_next_frame(fake):
    """With 3 requests in flight and the server reading its inputs late, every result
    still belongs to its own frame: each frame went into its slot before the surface was
    overwritten by the next one."""
    images = frames(8, (19, 29, 3))
    with FrameClient("localhost", "grpc", in_flight=3, shared_memory="cuda") as client:
        results = list(client.infer_stream(reused_surface(images)))
    for (index, result), image in zip(results, images, strict=True):
        np.testing.assert_array_equal(result.rendered, 255 - image, err_msg=f"frame {index}")
    lifecycle_ok(fake.log)


def test_sequence_look_ahead_never_reads_a_reused_surface(fake):
    """A sequence frame is sent once the next frame shows it was not the last: each frame
    is copied into its slot before that next frame is pulled, START and END are right."""
    images = frames(6, (19, 29, 3))
    FakeProtocol.sequences = []
    with FrameClient("localhost", "grpc", in_flight=3, shared_memory="cuda") as client:
        results = list(client.infer_stream(reused_surface(images), sequence_id=7))
    for (index, result), image in zip(results, images, strict=True):
        np.testing.assert_array_equal(result.rendered, 255 - image, err_msg=f"frame {index}")
    flags = [(s.sequence_id, s.start, s.end) for s in FakeProtocol.sequences]
    assert flags == [(7, True, False)] + [(7, False, False)] * 4 + [(7, False, True)]
    lifecycle_ok(fake.log)


def test_close_waits_for_requests_in_flight_before_unregistering(fake):
    """A consumer that stops early leaves requests in the server: their regions are
    unregistered only after those requests ended."""
    images = frames(6, (19, 29, 3))
    with FrameClient("localhost", "grpc", in_flight=3, shared_memory="cuda") as client:
        stream = client.infer_stream(enumerate(images))
        next(stream)
        stream.close()  # 2 requests still pending: drained here, before any unregister
    events = [event for event, _ in fake.log]
    assert events.count("infer_input") == 3  # the answered one and the two drained
    assert events.index("unregister") > max(i for i, e in enumerate(events) if e == "infer_input")
    lifecycle_ok(fake.log)


def test_region_freed_late_by_the_server_is_unregistered_after_retries(fake):
    FakeProtocol.server.in_use_answers = 2
    with FrameClient("localhost", "grpc", in_flight=1, shared_memory="cuda") as client:
        client.infer(frames(1)[0])
    assert fake.live == []
    lifecycle_ok(fake.log)


def test_region_held_by_a_stuck_request_is_never_freed(fake, monkeypatch, caplog):
    """The server keeps saying "in use" (a request stuck inside it): after the grace
    period the region stays registered and allocated, with a warning that names it."""
    monkeypatch.setattr(shared_memory.RegionSlot, "UNREGISTER_GRACE", 0.2)
    FakeProtocol.server.in_use_answers = 10**6
    client = FrameClient("localhost", "grpc", in_flight=1, shared_memory="cuda")
    client.infer(frames(1)[0])
    with caplog.at_level("WARNING"):
        client.close()
    assert len(fake.live) == 2  # input and output regions: not destroyed
    assert not any(event == "destroy" for event, _ in fake.log)
    assert "still held by a request inside the server" in caplog.text


def test_stuck_request_blocks_its_slot_instead_of_overwriting_it(fake):
    """A slot whose request never answered is not reused for a new frame."""
    client = FrameClient("localhost", "grpc", in_flight=1, shared_memory="cuda", timeout=0.1)
    slot = client._slots[0]
    slot.in_flight = concurrent.futures.Future()  # never resolves
    with pytest.raises(triton_client.ServerUnavailable, match="has not come back"):
        client.infer(frames(1)[0])
    slot.in_flight = None
    client.close()


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        ({"face_detector": ["KIND_GPU"], "face_renderer": ["KIND_GPU", "KIND_GPU"]}, True),
        ({"face_detector": ["KIND_GPU"], "face_renderer": ["KIND_CPU"]}, False),
        ({"face_detector": []}, False),
    ],
)
def test_served_on_gpu_reads_the_steps_that_take_the_image(kinds, expected):
    configs = {
        "tddfa": {
            "ensemble_scheduling": {
                "step": [{"model_name": name, "input_map": {"IMAGE": "IMAGE"}} for name in kinds]
                + [{"model_name": "face_regressor", "input_map": {"CROPS": "CROPS"}}]
            }
        },
        "face_regressor": {"instance_group": [{"kind": "KIND_CPU"}]},  # never asked
        **{
            name: {"instance_group": [{"kind": kind} for kind in group]}
            for name, group in kinds.items()
        },
    }
    protocol = types.SimpleNamespace(model_config=configs.__getitem__)
    assert triton_client.served_on_gpu_from(protocol) is expected


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
    # a registration that raised may still have reached the server: undone, then destroyed
    assert [e for e, _ in fake.log] == ["create", "unregister", "destroy"]


def test_remote_server_is_refused(fake):
    with pytest.raises(ClientError, match="same host|on this host"):
        FrameClient("203.0.113.7:8001", "grpc", shared_memory="cuda")
    assert fake.log == []


def test_missing_cuda_python_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.utils.cuda_shared_memory", None)
    FakeProtocol.server = FakeServer(FakeCudaShm([]))
    monkeypatch.setattr(triton_client, "Transport", FakeProtocol)
    with pytest.raises(ClientError, match="cuda-python"):
        FrameClient("localhost", "grpc", shared_memory="cuda")


def test_rendered_on_device_needs_cuda_mode():
    with pytest.raises(ValueError, match="shared_memory='cuda'"):
        FrameClient("localhost", "grpc", shared_memory="system", rendered_on_device=True)


# -- tddfa video over CUDA shared memory -------------------------------------------------


class FakeNvDecoder:
    """Stands in for video_nvidia.NvDecoder: device frames through one reused surface."""

    name = "nvdec (fake)"
    on_device = True

    def __init__(self, images):
        self.images = images

    def __iter__(self):
        for index, surface in reused_surface(self.images):
            yield video_io.Frame(surface, 100 + index, index)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class RecordingEncoder:
    name = "recording"

    def __init__(self):
        self.written = []
        self.frames_written = 0
        self.path = None

    def open(self, path, *args, **kwargs):
        self.path = Path(path)
        return self

    def write(self, image, pts):
        self.written.append((pts, np.array(image, copy=True)))
        self.frames_written += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.path.write_bytes(b"")  # the file the atomic rename expects


def test_video_frames_go_device_to_device_and_back(fake, monkeypatch, tmp_path):
    """process_video with an NVDEC decoder and a CUDA shared memory client: every frame is
    written device to device into its slot (never through the host), each rendered frame
    reaches the encoder in order with its pts, although the decoder reuses one surface."""
    images = frames(7, (19, 29, 3))
    info = video_io.VideoInfo(29, 19, 7, Fraction(25), Fraction(1, 25), "h264", False)
    encoder = RecordingEncoder()
    monkeypatch.setattr(video_client, "probe", lambda path: info)
    monkeypatch.setattr(video_client, "open_decoder", lambda *a, **k: FakeNvDecoder(images))
    monkeypatch.setattr(video_client, "open_encoder", encoder.open)
    with FrameClient("localhost", "grpc", in_flight=3, shared_memory="cuda") as client:
        stats = video_client.process_video(
            client, tmp_path / "in.mp4", tmp_path / "out.mp4", progress=False
        )
    assert (stats.frames, stats.transport) == (7, "cuda")
    assert [pts for pts, _ in encoder.written] == list(range(100, 107))
    for (_, rendered), image in zip(encoder.written, images, strict=True):
        np.testing.assert_array_equal(rendered, 255 - image)
    events = [event for event, _ in fake.log]
    assert events.count("write_device") == 7 and "write_host" not in events
    lifecycle_ok(fake.log)


def test_video_host_transport_copies_nvdec_frames_to_the_host(monkeypatch):
    """Without CUDA shared memory, NVDEC frames are copied to the host one by one."""
    monkeypatch.setattr(video_io, "host_array", lambda image: image.host.copy())
    decoder = FakeNvDecoder(frames(2))
    client = types.SimpleNamespace(shared_memory_kind="system")
    pulled = list(video_client.frames_for(client, decoder))
    assert all(isinstance(image, np.ndarray) for _, image in pulled)  # host copies
    np.testing.assert_array_equal(pulled[0][1], decoder.images[0])  # not overwritten


@pytest.mark.parametrize(
    ("decoder", "url", "on_gpu", "cuda_ok", "expected"),
    [
        ("nvdec", "localhost:8001", True, True, "cuda"),
        ("nvdec", "localhost:8001", False, True, "auto"),  # server's models on the CPU
        ("nvdec", "203.0.113.7:8001", True, True, "auto"),  # remote server
        ("cpu", "localhost:8001", True, True, "auto"),  # frames decoded on the host
        ("nvdec", "localhost:8001", True, False, "auto"),  # no CUDA shared memory client
    ],
)
def test_auto_transport(monkeypatch, decoder, url, on_gpu, cuda_ok, expected):
    monkeypatch.setattr(video_client, "served_on_gpu", lambda *a, **k: on_gpu)

    def fake_cuda_shm():
        if not cuda_ok:
            raise ClientError("CUDA shared memory unavailable")

    monkeypatch.setattr(video_client, "cuda_shm", fake_cuda_shm)
    assert video_client.choose_transport("auto", decoder, url, "grpc") == expected
    assert video_client.choose_transport("system", decoder, url, "grpc") == "system"


def test_regions_registered_under_the_servers_gpu_number(fake, monkeypatch):
    """A server pinned to physical GPU 1 (``tddfa serve --gpus 1``) calls it 0: the client
    allocates on its GPU 1 and registers the region as the server's device 0."""
    seen = []
    original = FakeServer.register_cuda_shared_memory

    def spy(self, name, raw_handle, device_id, byte_size):
        seen.append(device_id)
        return original(self, name, raw_handle, device_id, byte_size)

    monkeypatch.setattr(FakeServer, "register_cuda_shared_memory", spy)
    with FrameClient(
        "localhost", "grpc", in_flight=1, shared_memory="cuda", cuda_device=1, server_cuda_device=0
    ) as client:
        client.infer(frames(1)[0])
        assert {region.device_id for region in fake.live} == {1}  # allocated on our GPU 1
    assert seen and set(seen) == {0}  # registered as the server's GPU 0
