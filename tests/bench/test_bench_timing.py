"""How every benchmark measures: interleaved timing and peak memory."""

import sys

from lib_ort.bench.timing import peak_rss_mb, time_interleaved


def test_configurations_are_timed_interleaved_in_a_rotating_order():
    calls = []
    timings = time_interleaved({name: (lambda name=name: calls.append(name)) for name in "abc"}, runs=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one further on
    assert all(len(t["samples_ms"]) == 3 and t["min_ms"] <= t["median_ms"] <= t["max_ms"] for t in timings.values())


def test_peak_memory_is_read_where_resource_does_not_exist(monkeypatch):
    """Windows has no ``resource`` module: the process's peak comes from psutil, the children's is unknown."""
    import psutil  # noqa: F401  (psutil's own Linux module imports resource: load it before hiding resource)

    unix = peak_rss_mb()
    monkeypatch.setitem(sys.modules, "resource", None)  # import resource -> ImportError, as on Windows
    windows = peak_rss_mb()
    assert unix > 0 and windows > 0
    assert peak_rss_mb(children=True) is None
