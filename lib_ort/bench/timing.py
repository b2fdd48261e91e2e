"""How every benchmark measures: medians of interleaved calls, relative error, peak memory.

Shared by the UNet, VAE and profile benchmarks so that their numbers are comparable.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch


def peak_rss_mb(children: bool = False) -> float | None:
    """The highest resident memory (MiB) of this process, or with ``children`` of its finished child
    processes (the optimization child); None where the platform cannot tell (children on Windows).

    ``resource`` exists only on Unix; on Windows (the DirectML platform) the process's peak working set
    comes from psutil, which the WebUI installs.
    """
    try:
        import resource
    except ImportError:
        if children:
            return None
        import psutil

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**20
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss
    return usage / 2**20 if sys.platform == "darwin" else usage / 1024.0  # macOS reports bytes, Linux KiB


def time_calls(fn, runs: int, warmup: int) -> dict:
    """Median, min, max and samples (ms) of ``runs`` calls of ``fn`` after ``warmup`` calls."""
    return time_interleaved({"call": fn}, runs, warmup)["call"]


def time_interleaved(fns: dict, runs: int, warmup: int) -> dict:
    """``time_calls`` for several configurations at once: round r runs every configuration once, in an
    order rotated by r, so a machine that slows down or speeds up during the run (a shared VM does) moves
    every configuration alike instead of favouring the one timed in the quiet minutes."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    samples = {name: [] for name in names}
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            samples[name].append((time.perf_counter() - start) * 1000.0)
    return {name: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v),
                   "samples_ms": [round(x, 2) for x in v]} for name, v in samples.items()}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|."""
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))
