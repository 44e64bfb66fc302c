"""Give freed memory back to the operating system between long stages.

glibc keeps freed heap memory in its arenas; calibration and reconstruction at 224² free gigabytes of
mid-sized tensors whose pages then stay resident (measured: 2.0 GB resident, 1.0 GB after a trim), which
is what an out-of-memory killer or a CI runner's limit sees. ``malloc_trim`` returns them; elsewhere
(macOS, musl) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
