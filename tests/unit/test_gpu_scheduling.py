"""tddfa.gpu_scheduling against a stand-in of the CUDA driver library (no GPU here): the
flags it asks for, on a context made later and on one that exists, and the reasons it gives
when it keeps CUDA's default."""

from __future__ import annotations

import pytest

from tddfa import gpu_scheduling
from tddfa.gpu_scheduling import SCHED_BLOCKING_SYNC, use_blocking_sync


class FakeDriver:
    """The few driver entry points used, recording calls; ``active`` says whether the
    primary context exists; ``set_flags_status`` is cuCtxSetFlags' answer."""

    def __init__(self, active: bool, set_flags_status: int = 0, flags: int = 0x10):
        self.active, self.flags, self.set_flags_status = active, flags, set_flags_status
        self.calls: list[tuple] = []
        self.current_flags = flags

    def __getattr__(self, name):
        handler = type(self).__dict__.get(f"_{name}")

        def call(*args):
            self.calls.append((name, args))
            return 0 if handler is None else handler(self, *args)

        return call

    def _cuDevicePrimaryCtxGetState(self, device, flags, active):
        flags._obj.value, active._obj.value = self.flags, int(self.active)
        return 0

    def _cuDevicePrimaryCtxRetain(self, context, device):
        context._obj.value = 1234
        return 0

    def _cuCtxSetFlags(self, flags):
        if self.set_flags_status == 0:
            self.current_flags = flags.value
        return self.set_flags_status

    def _cuCtxGetFlags(self, flags):
        flags._obj.value = self.current_flags
        return 0


def names(driver: FakeDriver) -> list[str]:
    return [name for name, _ in driver.calls]


@pytest.fixture
def install(monkeypatch):
    def install(driver):
        monkeypatch.setattr(gpu_scheduling, "_driver", lambda: driver)
        return driver

    return install


def test_without_the_driver_the_default_stays(install):
    install(None)
    assert use_blocking_sync(0) == "default CUDA scheduling (no libcuda.so.1)"


def test_a_context_made_later_gets_blocking_sync(install):
    driver = install(FakeDriver(active=False))
    assert use_blocking_sync(0) == "blocking sync"
    (args,) = [a for n, a in driver.calls if n == "cuDevicePrimaryCtxSetFlags_v2"]
    assert args[1] == (0x10 | SCHED_BLOCKING_SYNC)  # other flags kept
    assert "cuCtxSetFlags" not in names(driver)


def test_an_existing_context_is_changed_while_current_and_released(install):
    driver = install(FakeDriver(active=True))
    assert use_blocking_sync(0) == "blocking sync"
    order = names(driver)
    assert order.index("cuCtxPushCurrent_v2") < order.index("cuCtxSetFlags")
    assert order.index("cuCtxSetFlags") < order.index("cuCtxPopCurrent_v2")
    assert "cuDevicePrimaryCtxRelease_v2" in order  # the retain is balanced


def test_an_old_driver_keeps_the_default_and_says_why(install):
    install(FakeDriver(active=True, set_flags_status=-1))
    assert "cuCtxSetFlags needs a CUDA 12.1 driver" in use_blocking_sync(0)
