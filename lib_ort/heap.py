"""Give freed heap memory back to the system after a session is dropped or rebuilt.

A dropped ONNX Runtime session (and the temporaries of building one: graph transforms, pre-packed
weights) frees its memory into glibc's malloc arenas, which keep it: the process stays as large as at its
peak. ``malloc_trim(0)`` hands the free pages back. Elsewhere (no glibc: Windows, macOS, musl) this does
nothing, as there is nothing of the kind to call.
"""

from __future__ import annotations

import ctypes
import sys


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def trim() -> bool:
    """Return the process's free heap pages to the system; True where that could be asked (glibc)."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
