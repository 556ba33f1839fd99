"""gRPC calls of the ``tddfa`` ensemble for the GPU suite: plain (frame bytes in the
request) and through CUDA shared memory made with CuPy (tritonclient 2.51's own
cuda_shared_memory module needs cuda-python 12, which the CUDA 13 machines lack)."""

from __future__ import annotations

import base64
import uuid

import numpy as np
import tritonclient.grpc as grpcclient

from tddfa_tools.serve import admin_token

TIMEOUT_S = 120  # a request that never returns fails the test instead of hanging the suite
OUTPUTS = ("RENDERED", "FACE_COUNT", "FACE_BOXES", "LANDMARKS", "POSE", "PARAMS", "VERTICES")
MODEL = "tddfa"


def infer(url: str, image: np.ndarray, outputs=OUTPUTS) -> dict[str, np.ndarray]:
    """One frame (H, W, 3) uint8 -> {output: array without the batch axis}."""
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("IMAGE", [1, *image.shape], "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(image[None]))
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        result = client.infer(MODEL, [tensor], outputs=requested, client_timeout=TIMEOUT_S)
        return {name: result.as_numpy(name)[0] for name in outputs}


def infer_sequence(
    url: str, image: np.ndarray, outputs, frames: int, sequence_id: int
) -> list[dict[str, np.ndarray]]:
    """``frames`` copies of one frame as a ``tddfa_track`` sequence (START on the first, END
    on the last) -> per frame {output: array without the batch axis}."""
    results = []
    with grpcclient.InferenceServerClient(url) as client:
        for i in range(frames):
            tensor = grpcclient.InferInput("IMAGE", [1, *image.shape], "UINT8")
            tensor.set_data_from_numpy(np.ascontiguousarray(image[None]))
            result = client.infer(
                "tddfa_track",
                [tensor],
                outputs=[grpcclient.InferRequestedOutput(n) for n in outputs],
                sequence_id=sequence_id,
                sequence_start=i == 0,
                sequence_end=i == frames - 1,
                client_timeout=TIMEOUT_S,
            )
            results.append({n: result.as_numpy(n)[0] for n in outputs})
    return results


class CudaRegion:
    """A cudaMalloc'd buffer registered with the server as CUDA shared memory (CuPy)."""

    def __init__(
        self,
        client: grpcclient.InferenceServerClient,
        nbytes: int,
        device: int = 0,
        headers: dict | None = None,
    ):
        import cupy

        self.cupy, self.client, self.nbytes, self.device = cupy, client, nbytes, device
        self.headers = headers  # the server's admin token: registration is restricted
        self.name = f"tddfa_gpu_test_{uuid.uuid4().hex[:8]}"
        with cupy.cuda.Device(device):
            self.memory = cupy.cuda.Memory(nbytes)  # its own cudaMalloc: IPC needs the base
            handle = cupy.cuda.runtime.ipcGetMemHandle(self.memory.ptr)
        client.register_cuda_shared_memory(
            self.name, base64.b64encode(handle), device, nbytes, headers=headers
        )

    def view(self, shape, dtype, offset: int = 0):
        """A CuPy array over ``offset`` bytes into the region."""
        pointer = self.cupy.cuda.MemoryPointer(self.memory, offset)
        return self.cupy.ndarray(shape, dtype, pointer)

    def close(self) -> None:
        self.client.unregister_cuda_shared_memory(self.name, headers=self.headers)
        self.memory = None


def infer_cuda_shm(url: str, image, outputs=("RENDERED", "FACE_COUNT")) -> dict:
    """One frame through CUDA shared memory both ways: CuPy (H, W, 3) uint8 in; RENDERED
    comes back as a CuPy array (device to device), the small outputs as numpy."""
    import cupy

    height, width, _ = image.shape
    frame_bytes = image.size
    with grpcclient.InferenceServerClient(url) as client:
        headers = admin_token.headers(admin_token.find_token(url), "grpc")
        regions = [CudaRegion(client, frame_bytes, headers=headers) for _ in range(2)]
        try:
            regions[0].view(image.shape, cupy.uint8)[...] = image
            cupy.cuda.runtime.deviceSynchronize()
            tensor = grpcclient.InferInput("IMAGE", [1, *image.shape], "UINT8")
            tensor.set_shared_memory(regions[0].name, frame_bytes)
            requested = []
            for name in outputs:
                output = grpcclient.InferRequestedOutput(name)
                if name == "RENDERED":
                    output.set_shared_memory(regions[1].name, frame_bytes)
                requested.append(output)
            result = client.infer(MODEL, [tensor], outputs=requested, client_timeout=TIMEOUT_S)
            got = {name: result.as_numpy(name)[0] for name in outputs if name != "RENDERED"}
            if "RENDERED" in outputs:
                got["RENDERED"] = regions[1].view((height, width, 3), cupy.uint8).copy()
            return got
        finally:
            for region in regions:
                region.close()


def mosaic(face: np.ndarray) -> np.ndarray:
    """12 copies of a one-face photo in a 3x4 grid (more faces than K = 8)."""
    tile = face[:: max(1, face.shape[0] // 240), :: max(1, face.shape[0] // 240)]
    return np.ascontiguousarray(np.concatenate([np.concatenate([tile] * 4, axis=1)] * 3, axis=0))


def blank() -> np.ndarray:
    return np.full((360, 640, 3), 127, np.uint8)
