"""What the CPU can do that decides how OpenVINO runs: native bf16 arithmetic.

OpenVINO's CPU plugin runs a graph in bf16 about 3-4x faster than ONNX Runtime's CPU provider in fp32 on
CPUs with bf16 instructions (AMX or AVX512_BF16), and no faster than it in fp32 (docs/benchmarks.md).
So "Automatic" uses OpenVINO in bf16 only where the CPU has them. The flags are read from
``/proc/cpuinfo`` on Linux; elsewhere they are unknown (an empty set), which reads as "no native bf16":
fp32 and the CPU provider, never a guess. Nothing is read at import time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

#: the CPU flags (as Linux names them) that mean bf16 arithmetic in hardware
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def parse_cpuinfo(text: str) -> frozenset[str]:
    """The flags of the first processor listed in ``/proc/cpuinfo``'s text (all cores share them)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def read_flags(path: str | Path = CPUINFO) -> frozenset[str]:
    """This CPU's flags; an empty set where they cannot be read (not Linux, no permission)."""
    try:
        return parse_cpuinfo(Path(path).read_text(errors="replace"))
    except OSError:
        return frozenset()


@functools.lru_cache(maxsize=1)
def this_cpu_flags() -> frozenset[str]:
    """:func:`read_flags` once per process (the CPU does not change while the WebUI runs)."""
    return read_flags()


def has_native_bf16(flags: Iterable[str]) -> bool:
    return not NATIVE_BF16_FLAGS.isdisjoint(flags)
