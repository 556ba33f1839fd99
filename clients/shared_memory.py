"""The FrameClient's shared memory: one input and one output region per in-flight slot,
system (POSIX) or CUDA, registered with the server once and reused from frame to frame.

Life cycle, strictly (tritonclient's ``simple_*_shm_client`` examples): create -> register
-> use -> unregister -> destroy. A region is never unregistered while a request that uses it
may still be inside the server: :meth:`RegionSlot.close` first waits for the slot's request
to end (its answer, its error or its client-side timeout). A server that still holds the
region after that ("Cannot unregister shared memory region ..., it is currently in use": the
request is stuck in the server) gets :attr:`RegionSlot.UNREGISTER_GRACE` seconds more; then
the region is left registered and allocated, with a warning naming it, because freeing
memory the server still maps would turn a stuck request into memory corruption.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import tenacity
from tritonclient.utils import InferenceServerException

from tddfa_clients.errors import ClientError

LOG = logging.getLogger(__name__)

_IN_USE = "currently in use"  # Triton's answer to unregistering a region a request holds


def _in_use(exc: BaseException) -> bool:
    """Triton refused to unregister a region because a request still holds it."""
    return isinstance(exc, InferenceServerException) and _IN_USE in (exc.message() or str(exc))


_HTTP_WAIT_TIMEOUT = "failed to obtain inference response"  # tritonclient.http's timeout


def request_ended(future: Any, timeout: float | None) -> bool:
    """Wait up to ``timeout`` s for a request's future; True once it has ended (result or
    error), False while it is still pending."""
    try:
        future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return False
    except InferenceServerException as exc:
        return _HTTP_WAIT_TIMEOUT not in (exc.message() or "")
    except Exception:  # noqa: BLE001  (a failed request has ended too)
        return True
    return True


class RegionInUse(ClientError):
    """The server still uses a region: a request that uses it has not left the server."""


class RegionSlot:
    """One input region and one output region, registered with the server and reused;
    created on first use, grown when a frame needs more, released by :meth:`close` only
    once no request uses them. Subclasses say how regions are made.

    ``in_flight`` holds the future of the request that uses the slot (set by the client when
    it sends, cleared when it has the answer).
    """

    UNREGISTER_GRACE = 10.0  # s: a region "in use" after its request ended may free up

    def __init__(self, protocol: Any, tag: str):
        self._protocol = protocol
        self._tag = tag
        self.regions: dict[str, tuple[str, Any, int]] = {}  # role -> (name, handle, size)
        self.in_flight: Any = None
        self.abandoned: list[tuple[str, Any]] = []  # (name, handle) the server still held

    def _create(self, name: str, size: int) -> Any:
        """Create and register region ``name``; return its handle (destroyed on failure)."""
        raise NotImplementedError

    def _unregister(self, name: str) -> None:
        raise NotImplementedError

    def _destroy(self, handle: Any) -> None:
        raise NotImplementedError

    def _forget(self, name: str) -> None:
        """After a registration that raised: the server may have registered ``name`` before
        the call was interrupted (Ctrl-C, SIGTERM); unregister it, whatever the answer."""
        try:
            self._unregister(name)
        except Exception:  # noqa: BLE001  (not registered: nothing to undo)
            LOG.debug("%s was not registered", name)

    def ensure(self, role: str, size: int) -> str:
        """The region name for ``role`` holding at least ``size`` bytes."""
        current = self.regions.get(role)
        if current is not None and current[2] >= size:
            return current[0]
        if current is not None:
            self._release(role)
        name = f"{self._tag}_{role}"
        self.regions[role] = (name, self._create(name, size), size)
        return name

    def handle(self, role: str) -> Any:
        return self.regions[role][1]

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until the slot's request has ended; False if it is still pending."""
        if self.in_flight is None:
            return True
        if not request_ended(self.in_flight, timeout):
            return False
        self.in_flight = None
        return True

    def _unregister_when_free(self, name: str) -> None:
        """Unregister ``name``; while the server says it is in use, retry for
        UNREGISTER_GRACE seconds, then raise RegionInUse."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_in_use),
            stop=tenacity.stop_after_delay(self.UNREGISTER_GRACE),
            wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        )
        try:
            retrying(self._unregister, name)
        except InferenceServerException as exc:
            if not _in_use(exc):
                raise
            raise RegionInUse(exc.message() or str(exc)) from exc

    def _release(self, role: str) -> None:
        name, handle, _ = self.regions.pop(role)
        try:
            self._unregister_when_free(name)
        except RegionInUse:
            LOG.warning(
                "shared memory region %s is still held by a request inside the server %.0f s "
                "after the client gave up on it: left registered and allocated (freeing it "
                "could let the server write into freed memory). The server holds a stuck "
                "request: see docs/multi_gpu.md (hang diagnosis)",
                name,
                self.UNREGISTER_GRACE,
            )
            self.abandoned.append((name, handle))
            return
        except Exception as exc:  # noqa: BLE001  (the server may be gone; free our side)
            LOG.warning("could not unregister shared memory %s: %s", name, exc)
        self._destroy(handle)

    def close(self, wait: float | None = 0.0) -> None:
        """Release both regions once the slot's request has ended (waiting up to ``wait``
        s for it); a region the server still holds is left alone (see the module doc)."""
        if not self.wait_idle(wait):
            LOG.warning(
                "a request using shared memory %s is still pending after %s s: the server is "
                "not answering; releasing its regions only if the server lets go of them",
                self._tag,
                wait,
            )
        for role in list(self.regions):
            self._release(role)


class SharedMemorySlot(RegionSlot):
    """System (POSIX) shared memory regions."""

    def _create(self, name: str, size: int) -> Any:
        shm = system_shm()
        handle = shm.create_shared_memory_region(name, "/" + name, size)
        try:
            self._protocol.shared_memory("register_system_shared_memory", name, "/" + name, size)
        except BaseException:
            self._forget(name)
            shm.destroy_shared_memory_region(handle)
            raise
        return handle

    def _unregister(self, name: str) -> None:
        self._protocol.shared_memory("unregister_system_shared_memory", name)

    def _destroy(self, handle: Any) -> None:
        shm = system_shm()
        shm.destroy_shared_memory_region(handle)

    def write(self, image: np.ndarray) -> None:
        """Copy ``image`` to the start of "input", straight into the region (tritonclient's
        ``set_shared_memory_region`` first copies every array once more, to flatten it)."""
        shm = system_shm()
        region = shm.get_contents_as_numpy(self.handle("input"), image.dtype, image.shape)
        np.copyto(region, image)

    def view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy view (no copy) of "output" at byte ``offset``, valid until the slot's next
        request."""
        import tritonclient.utils.shared_memory as shm

        return shm.get_contents_as_numpy(self.handle("output"), dtype, shape, offset=offset)

    def read(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        shm = system_shm()
        view = shm.get_contents_as_numpy(self.handle("output"), dtype, shape, offset=offset)
        return np.array(view, copy=True)  # the region is reused by the next frame


@contextlib.contextmanager
def quiet_pkg_resources() -> Iterator[None]:
    """tritonclient 2.51's shared-memory modules import pkg_resources (kept importable by
    setuptools < 81), which warns on import: not the user's concern, so not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        yield


def system_shm() -> Any:
    """tritonclient's system shared-memory module (ImportError when it cannot load)."""
    with quiet_pkg_resources():
        import tritonclient.utils.shared_memory as shm
    return shm
