"""Headless OpenGL contexts through EGL: Mesa llvmpipe on CPU, NVIDIA EGL devices on GPU.

PyOpenGL picks its windowing platform (GLX, EGL, ...) once, when ``OpenGL`` is first
imported, from the environment variable ``PYOPENGL_PLATFORM``. A Triton model or a test
has no X display, so the default (GLX) would fail; this module therefore sets
``PYOPENGL_PLATFORM=egl`` *before* importing OpenGL, unless the user set it already.
Any module that imports OpenGL must import this one first (``tddfa.render`` does).

Contexts are OpenGL 4.3+ core (the renderer draws with multi-draw indirect), created
without any surface (``EGL_KHR_surfaceless_context``): the renderer draws into its own
framebuffer object. A context is bound to no thread:
:meth:`GLContext.current` makes it current in the calling thread for the duration of a
``with`` block and releases it afterwards, so Triton may call from any thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import threading
from collections.abc import Iterator

if "PYOPENGL_PLATFORM" not in os.environ:
    os.environ["PYOPENGL_PLATFORM"] = "egl"

import OpenGL  # noqa: E402  (must follow the platform choice above)
from OpenGL import EGL  # noqa: E402

logger = logging.getLogger(__name__)

EGL_PLATFORM_SURFACELESS_MESA = 0x31DD  # EGL_MESA_platform_surfaceless (not in PyOpenGL)
EGL_PLATFORM_DEVICE_EXT = 0x313F
EGL_CUDA_DEVICE_NV = 0x323A
EGL_CONTEXT_MAJOR_VERSION = 0x3098
EGL_CONTEXT_MINOR_VERSION = 0x30FB
EGL_CONTEXT_OPENGL_PROFILE_MASK = 0x30FD
EGL_CONTEXT_OPENGL_CORE_PROFILE_BIT = 0x1
GL_MIN_VERSION = (4, 3)

_display_lock = threading.Lock()
_display_refs: dict[int, int] = {}  # EGLDisplay handle value -> number of live contexts


class GLContextError(RuntimeError):
    """EGL/OpenGL could not be set up; the message says what is missing and how to fix it."""


def parse_device(device: str) -> int | None:
    """``"cpu"`` -> None, ``"cuda"``/``"cuda:N"`` -> N (0 by default); anything else raises."""
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", device.strip().lower())
    if match is None:
        raise ValueError(f"device must be 'cpu' or 'cuda:N', got {device!r}")
    if device.strip().lower() == "cpu":
        return None
    return int(match.group(1) or 0)


def _check_platform() -> None:
    name = type(OpenGL.platform.PLATFORM).__name__
    if "EGL" not in name:
        raise GLContextError(
            f"PyOpenGL was initialised with the {name} platform, but headless rendering needs "
            "EGL: set PYOPENGL_PLATFORM=egl in the environment (or import tddfa.render "
            "before anything else imports OpenGL)"
        )


def _client_extensions() -> str:
    raw = EGL.eglQueryString(EGL.EGL_NO_DISPLAY, EGL.EGL_EXTENSIONS)
    return raw.decode() if raw else ""


def _get_platform_display(platform: int, native: object) -> object:
    display = EGL.eglGetPlatformDisplayEXT(platform, native, None)
    if not display:
        raise GLContextError(f"eglGetPlatformDisplayEXT(0x{platform:x}) returned no display")
    return display


def _cpu_display() -> object:
    """Mesa's surfaceless platform (no X, no GPU needed); else the default display."""
    if "EGL_MESA_platform_surfaceless" in _client_extensions():
        return _get_platform_display(EGL_PLATFORM_SURFACELESS_MESA, EGL.EGL_DEFAULT_DISPLAY)
    logger.info("EGL_MESA_platform_surfaceless missing; using the default EGL display")
    return EGL.eglGetDisplay(EGL.EGL_DEFAULT_DISPLAY)


class _DeviceQueries:
    """EGL_EXT_device_enumeration/_query through eglGetProcAddress and plain ctypes.

    PyOpenGL's wrappers of these extension functions check the extension against the
    current display's extension string, which fails before any display is initialised.
    """

    def __init__(self) -> None:
        egl = ctypes.CDLL(ctypes.util.find_library("EGL") or "libEGL.so.1")
        egl.eglGetProcAddress.restype = ctypes.c_void_p
        egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]

        def function(name: str, restype, *argtypes):
            address = egl.eglGetProcAddress(name.encode())
            if not address:
                raise GLContextError(f"EGL has no {name}: install the NVIDIA driver's EGL library")
            return ctypes.CFUNCTYPE(restype, *argtypes)(address)

        pointer = ctypes.POINTER
        self.devices = function(
            "eglQueryDevicesEXT",
            ctypes.c_uint,
            ctypes.c_int32,
            pointer(ctypes.c_void_p),
            pointer(ctypes.c_int32),
        )
        self.string = function(
            "eglQueryDeviceStringEXT", ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int32
        )
        self.attrib = function(
            "eglQueryDeviceAttribEXT",
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_int32,
            pointer(ctypes.c_ssize_t),  # EGLAttrib = intptr_t
        )


def _egl_devices(queries: _DeviceQueries) -> list[int]:
    """EGLDeviceEXT handles (as integers) of every EGL device."""
    count = ctypes.c_int32()
    if not queries.devices(0, None, ctypes.byref(count)):
        raise GLContextError("eglQueryDevicesEXT failed")
    devices = (ctypes.c_void_p * count.value)()
    if not queries.devices(count.value, devices, ctypes.byref(count)):
        raise GLContextError("eglQueryDevicesEXT failed")
    return [d for d in devices[: count.value] if d]


def _cuda_ordinal(queries: _DeviceQueries, egl_device: int) -> int | None:
    exts = queries.string(egl_device, EGL.EGL_EXTENSIONS) or b""
    if b"EGL_NV_device_cuda" not in exts:
        return None
    value = ctypes.c_ssize_t()
    if not queries.attrib(egl_device, EGL_CUDA_DEVICE_NV, ctypes.byref(value)):
        return None
    return int(value.value)


def _cuda_display(ordinal: int) -> object:
    """The EGL display of the NVIDIA EGL device whose CUDA ordinal is ``ordinal``."""
    extensions = _client_extensions().split()
    if "EGL_EXT_device_base" in extensions:  # NVIDIA: base = enumeration + query
        extensions += ["EGL_EXT_device_enumeration", "EGL_EXT_device_query"]
    needed = ("EGL_EXT_device_enumeration", "EGL_EXT_platform_device")
    missing = [ext for ext in needed if ext not in extensions]
    if missing:
        raise GLContextError(
            f"EGL lacks {', '.join(missing)}: install the NVIDIA driver's EGL library "
            "(libnvidia-egl, with the glvnd vendor file 10_nvidia.json) to render on cuda devices"
        )
    queries = _DeviceQueries()
    seen = []
    for egl_device in _egl_devices(queries):
        cuda = _cuda_ordinal(queries, egl_device)
        seen.append(cuda)
        if cuda == ordinal:
            return _get_platform_display(EGL_PLATFORM_DEVICE_EXT, ctypes.c_void_p(egl_device))
    raise GLContextError(
        f"no EGL device matches CUDA device {ordinal} (CUDA ordinals of the EGL devices: {seen}); "
        "check CUDA_VISIBLE_DEVICES and that the NVIDIA EGL vendor library is installed"
    )


def _choose_config(display: object) -> object:
    attribs = [
        EGL.EGL_SURFACE_TYPE, EGL.EGL_PBUFFER_BIT,
        EGL.EGL_RENDERABLE_TYPE, EGL.EGL_OPENGL_BIT,
        EGL.EGL_RED_SIZE, 8, EGL.EGL_GREEN_SIZE, 8, EGL.EGL_BLUE_SIZE, 8,
        EGL.EGL_NONE,
    ]  # fmt: skip
    config = EGL.EGLConfig()
    count = EGL.EGLint()
    array = (EGL.EGLint * len(attribs))(*attribs)
    ok = EGL.eglChooseConfig(display, array, ctypes.pointer(config), 1, ctypes.pointer(count))
    if not ok or count.value < 1:
        raise GLContextError("no EGL config supports desktop OpenGL with an RGB8 buffer")
    return config


class GLContext:
    """One EGL display + OpenGL core context, made current per ``with ctx.current():``.

    Args:
        device: ``"cpu"`` (Mesa llvmpipe, surfaceless platform) or ``"cuda:N"`` (the NVIDIA
            EGL device that is CUDA device N).
    """

    def __init__(self, device: str = "cpu") -> None:
        _check_platform()
        self.device = device
        self.cuda_ordinal = parse_device(device)
        self._lock = threading.RLock()
        self._context = None
        try:
            if self.cuda_ordinal is None:
                self._display = _cpu_display()
            else:
                self._display = _cuda_display(self.cuda_ordinal)
        except (EGL.EGLError, AttributeError, OSError) as exc:
            raise GLContextError(
                f"EGL display for {device!r} unavailable ({exc}); on CPU install Mesa's EGL "
                "(apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0) and keep "
                "EGL_PLATFORM=surfaceless"
            ) from exc
        self._initialize()

    def _initialize(self) -> None:
        major, minor = EGL.EGLint(), EGL.EGLint()
        try:
            ok = EGL.eglInitialize(self._display, ctypes.pointer(major), ctypes.pointer(minor))
        except EGL.EGLError as exc:
            raise GLContextError(f"eglInitialize failed for {self.device!r}: {exc}") from exc
        if not ok:
            raise GLContextError(f"eglInitialize failed for {self.device!r}")
        with _display_lock:
            key = self._display_key
            _display_refs[key] = _display_refs.get(key, 0) + 1
        try:
            config = _choose_config(self._display)
            if not EGL.eglBindAPI(EGL.EGL_OPENGL_API):
                raise GLContextError("eglBindAPI(EGL_OPENGL_API) failed: no desktop OpenGL")
            attribs = [
                EGL_CONTEXT_MAJOR_VERSION, GL_MIN_VERSION[0],
                EGL_CONTEXT_MINOR_VERSION, GL_MIN_VERSION[1],
                EGL_CONTEXT_OPENGL_PROFILE_MASK, EGL_CONTEXT_OPENGL_CORE_PROFILE_BIT,
                EGL.EGL_NONE,
            ]  # fmt: skip
            array = (EGL.EGLint * len(attribs))(*attribs)
            context = EGL.eglCreateContext(self._display, config, EGL.EGL_NO_CONTEXT, array)
            if not context:
                raise GLContextError(
                    f"eglCreateContext failed for an OpenGL {GL_MIN_VERSION} core context"
                )
            self._context = context
        except BaseException:
            self._release_display()
            raise
        logger.info(
            "EGL %d.%d context for %s (vendor %s)",
            major.value,
            minor.value,
            self.device,
            (EGL.eglQueryString(self._display, EGL.EGL_VENDOR) or b"?").decode(),
        )

    @property
    def _display_key(self) -> int:
        return ctypes.cast(self._display, ctypes.c_void_p).value or 0

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Make the context current in this thread for the ``with`` block, then release it."""
        if self._context is None:
            raise GLContextError("the GL context was closed; create a new renderer")
        with self._lock:
            EGL.eglBindAPI(EGL.EGL_OPENGL_API)
            if not EGL.eglMakeCurrent(
                self._display, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, self._context
            ):
                raise GLContextError(
                    "eglMakeCurrent failed: the driver lacks EGL_KHR_surfaceless_context"
                )
            try:
                yield
            finally:
                EGL.eglMakeCurrent(
                    self._display, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, EGL.EGL_NO_CONTEXT
                )

    def close(self) -> None:
        """Destroy the context; terminate the display when no other context uses it."""
        with self._lock:
            if self._context is None:
                return
            EGL.eglDestroyContext(self._display, self._context)
            self._context = None
            self._release_display()

    def _release_display(self) -> None:
        with _display_lock:
            key = self._display_key
            _display_refs[key] = _display_refs.get(key, 1) - 1
            if _display_refs[key] <= 0:
                del _display_refs[key]
                EGL.eglTerminate(self._display)

    @property
    def closed(self) -> bool:
        return self._context is None
