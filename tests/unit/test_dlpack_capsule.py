"""Host tensors handed to the Python backend through DLPack (numpy 2 machines such as the
H200 image): the stub consumes the capsule but renames it "used_dlpack" instead of DLPack's
"used_dltensor", and numpy's capsule destructor then reports an unraisable error: a
traceback in the server log for every output tensor. A stand-in for the stub that does
exactly what python_backend's PbTensor::FromDLPackCapsule and ~PbTensor do."""

import ctypes
import gc
import sys

import numpy as np
import pytest
from fake_pb_utils import install


class DLManagedTensor(ctypes.Structure):
    # DLTensor's fields up to the ones the stand-in reads, then manager_ctx and deleter
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", ctypes.c_int32 * 2),
        ("ndim", ctypes.c_int32),
        ("dtype", ctypes.c_uint8 * 4),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.CFUNCTYPE(None, ctypes.c_void_p)),
    ]


get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
get_pointer.restype = ctypes.c_void_p
get_pointer.argtypes = (ctypes.py_object, ctypes.c_char_p)
set_name = ctypes.pythonapi.PyCapsule_SetName
set_name.argtypes = (ctypes.py_object, ctypes.c_char_p)
STUB_NAME = b"used_dlpack"  # what Triton 2.51's stub names a consumed capsule


class StubTensor:
    """pb_utils.Tensor.from_dlpack(name, capsule) as the stub does it: read the managed
    tensor, rename the capsule, and call its deleter when the tensor is released."""

    def __init__(self, name, capsule):
        self.name = name
        address = get_pointer(capsule, b"dltensor")
        self.managed = DLManagedTensor.from_address(address)
        self.shape = tuple(self.managed.shape[i] for i in range(self.managed.ndim))
        set_name(capsule, STUB_NAME)
        self.address = address

    def release(self):
        self.managed.deleter(self.address)


@pytest.fixture()
def unraisable(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


def test_numpy_reports_the_stubs_capsule_name_as_an_error(unraisable):
    """The problem itself: without the fix, every released capsule is an unraisable error."""
    capsule = np.arange(6, dtype=np.float32).__dlpack__()
    tensor = StubTensor("X", capsule)
    del capsule
    gc.collect()
    tensor.release()
    assert len(unraisable) == 1 and "PyCapsule_GetPointer" in str(unraisable[0].exc_value)


def test_host_tensor_from_dlpack_leaves_no_error_and_frees_the_array(monkeypatch, unraisable):
    install(monkeypatch)
    from tddfa_triton.tensors import host_tensor_from_dlpack

    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    before = sys.getrefcount(array)
    tensor = host_tensor_from_dlpack(StubTensor, "LANDMARKS", array)
    assert tensor.shape == (3, 4)
    assert sys.getrefcount(array) == before + 1  # the managed tensor holds the array
    gc.collect()
    assert unraisable == []
    tensor.release()  # ~PbTensor: the deleter frees numpy's reference exactly once
    assert sys.getrefcount(array) == before
    assert unraisable == []


def test_a_capsule_the_stub_refused_is_left_to_numpy(monkeypatch, unraisable):
    install(monkeypatch)
    from tddfa_triton.tensors import host_tensor_from_dlpack

    def refuse(name, capsule):
        raise RuntimeError("not consumed")

    array = np.zeros(4, np.float32)
    before = sys.getrefcount(array)
    with pytest.raises(RuntimeError):
        host_tensor_from_dlpack(refuse, "X", array)
    gc.collect()
    assert sys.getrefcount(array) == before and unraisable == []  # numpy freed it itself
