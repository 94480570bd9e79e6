"""Process start-up for a node: glibc malloc tuning and the event loop (uvloop or asyncio)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = [
    "ARENA_MAX",
    "MMAP_THRESHOLD_BYTES",
    "TRIM_THRESHOLD_BYTES",
    "loop_factory",
    "run",
    "tune_malloc",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's ceiling for the mmap threshold on 64-bit
TRIM_THRESHOLD_BYTES = 1 << 30  # keep up to this much freed heap instead of returning it
# glibc gives threads malloc arenas of their own, up to 8 per core; each keeps what its thread
# freed. A node runs every part on a thread of its own: measured (benchmarks/memory.py,
# LiteRT ConvNeXtLarge parts), 10-13 MiB resident per part went to those arenas, 48-65 MiB on
# a node with five parts, at the same requests/s. Two arenas serve a 2-4 core device.
ARENA_MAX = 2


def tune_malloc(
    *,
    mmap_threshold_bytes: int = MMAP_THRESHOLD_BYTES,
    trim_threshold_bytes: int = TRIM_THRESHOLD_BYTES,
    use_mmap: bool = False,
    arena_max: int = ARENA_MAX,
) -> bool:
    """Make glibc reuse freed tensor buffers instead of faulting in fresh pages each time.

    Call once at process start, before big allocations. Without it every large buffer is a
    fresh mmap whose pages fault in on first write (measured 5-8x slower for 16-64 MiB
    tensors). With use_mmap False, buffers above the mmap ceiling (32 MiB) come from the heap
    too. At most ``arena_max`` malloc arenas (0: glibc's default), so that the threads that
    run parts do not each keep an arena's worth of freed memory. Returns False, doing
    nothing, where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError, TypeError):
        logger.debug("not glibc (%s): malloc left as it is", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = [
        (_M_MMAP_THRESHOLD, min(mmap_threshold_bytes, MMAP_THRESHOLD_BYTES)),
        (_M_TRIM_THRESHOLD, min(trim_threshold_bytes, 2**31 - 1)),
    ]
    if not use_mmap:
        settings.append((_M_MMAP_MAX, 0))
    if arena_max > 0:
        settings.append((_M_ARENA_MAX, arena_max))
    ok = all(mallopt(param, value) == 1 for param, value in settings)
    logger.debug("glibc %s malloc tuned: %s (ok=%s)", version, settings, ok)
    return ok


def loop_factory(use_uvloop: bool | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """A new-loop function: uvloop when installed (None) or asked for (True), else asyncio."""
    if use_uvloop is False:
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if use_uvloop:
            raise
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, _T], *, use_uvloop: bool | None = None) -> _T:
    """Run a coroutine to completion on a fresh loop from ``loop_factory(use_uvloop)``."""
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(main)
