"""lib_ort.heap: freed heap pages go back to the system after a session is dropped (glibc only)."""

import sys

import numpy as np
import pytest

from lib_ort import heap


def anon_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_trim_returns_freed_heap_to_the_system():
    # small blocks live in malloc's arena (not in mmaps of their own); with the last one still held, the
    # free pages below it stay with the process after free(), as a dropped session's do, until a trim
    blocks = [np.ones(1024, dtype=np.float64) for _ in range(20000)]  # 160 MB
    keep = blocks[-1]
    del blocks
    before = anon_mb()
    assert heap.trim() is True
    assert before - anon_mb() > 80
    assert keep[0] == 1.0
