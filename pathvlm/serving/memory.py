"""Give the memory of decoded images back to the operating system once their request has ended.

A decoded 24-Mpixel image is 72 MB, and decoders and resizers make copies. glibc keeps freed
blocks below its mmap threshold in the heap, so after a few large images a server's resident
memory stays high although nothing uses it (issue 14: "the memory is not given back").
``malloc_trim(0)`` returns the free top of every heap to the system; it takes milliseconds, so it
runs only after requests whose images were large. Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading

TRIM_AFTER_PIXELS = 4_000_000  # requests whose images have at least this many pixels trim when they end

_libc = None
_lock = threading.Lock()


def trim_heap() -> bool:
    """``malloc_trim(0)`` on glibc; False where it is not available."""
    global _libc
    with _lock:
        if _libc is None:
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _libc = lib if hasattr(lib, "malloc_trim") else False
            except OSError:
                _libc = False
        if not _libc:
            return False
        _libc.malloc_trim(0)
        return True
