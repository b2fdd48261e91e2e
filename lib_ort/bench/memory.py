"""Peak memory of a whole process tree: the benchmark's process and every child it starts (the
optimization child), sampled together, plus each process's own peak and the machine-wide figure.

Why a sampler: ``getrusage`` gives this process's peak and the largest peak of any one finished child,
never what both held at the same moment, and the optimization's cost is exactly that sum (the parent
still holding its model while the child optimizes). A thread reads the resident size of every process
in the tree every ``interval`` seconds (Linux ``/proc``) and keeps the largest sum: the real
system-wide figure, within a sampling interval. Each process's own high-water mark (``VmHWM``, kept by
the kernel, so no sample can miss it) is reported beside it; their sum is an upper bound of the tree's
peak. The machine-wide figure (MemTotal - MemAvailable, above its value at the start) includes other
programs: it is only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import os
import threading

from ..memory import process_memory_mb

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _children_map() -> dict[int, list[int]]:
    """parent pid -> child pids, for every process visible in /proc."""
    found: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: the parent pid follows the last ')'
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        found.setdefault(ppid, []).append(int(entry.name))
    return found


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children = _children_map()
    pids, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        pids.append(pid)
        frontier.extend(children.get(pid, ()))
    return pids


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
    except OSError:
        return ""
    # "python -m lib_ort.olive_child job.json" -> "lib_ort.olive_child"
    for i, p in enumerate(parts):
        if p == b"-m" and i + 1 < len(parts):
            return parts[i + 1].decode(errors="replace")
    return os.path.basename(parts[0].decode(errors="replace")) if parts and parts[0] else ""


def system_used_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            info = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)}
        return (info["MemTotal"] - info["MemAvailable"]) / 1024.0
    except (OSError, KeyError, ValueError):
        return None


class TreeMemory:
    """``with TreeMemory() as mem: ...`` samples the tree of this process (or ``pid``) while the block
    runs; ``mem.phase(name)`` starts a named phase (each phase keeps its own tree peak); ``mem.report()``
    is what the benchmark's JSON shows. Where /proc does not exist, the report says so and holds only
    this process's own peak."""

    def __init__(self, pid: int | None = None, interval: float = 0.05):
        self.pid = pid or os.getpid()
        self.interval = interval
        self.available = os.path.isdir(f"/proc/{self.pid}")
        self.tree_peak_mb = 0.0
        self.processes: dict[int, dict] = {}
        self.phases: dict[str, float] = {}
        self._phase: str | None = None
        self._system_start = None
        self.system_peak_mb = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def phase(self, name: str) -> None:
        self.sample()
        self._phase = name
        self.phases.setdefault(name, 0.0)
        self.sample()

    def sample(self) -> float:
        """Read the tree once; returns its resident sum (MiB)."""
        if not self.available:
            return 0.0
        total = 0.0
        for pid in tree_pids(self.pid):
            status = process_memory_mb(pid)
            if status is None:
                continue
            rss, hwm = status
            total += rss
            row = self.processes.get(pid)
            if row is None:
                row = self.processes[pid] = {"pid": pid, "name": _cmdline(pid) or _name(pid), "peak_rss_mb": 0.0,
                                             "hwm_mb": 0.0, "phase": self._phase}
            row["peak_rss_mb"] = max(row["peak_rss_mb"], rss)
            row["hwm_mb"] = max(row["hwm_mb"], hwm)
        self.tree_peak_mb = max(self.tree_peak_mb, total)
        if self._phase is not None:
            self.phases[self._phase] = max(self.phases[self._phase], total)
        used = system_used_mb()
        if used is not None and self._system_start is not None:
            self.system_peak_mb = max(self.system_peak_mb or 0.0, used - self._system_start)
        self.samples += 1
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "TreeMemory":
        self._system_start = system_used_mb()
        self.sample()
        if self.available:
            self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def report(self) -> dict:
        """The tree's sampled peak, each phase's, each process's (sampled and kernel high-water mark),
        the sum of the processes' high-water marks (an upper bound) and the machine-wide rise."""
        from .timing import peak_rss_mb

        if not self.available:
            own = peak_rss_mb()
            return {"peak_rss_mb": round(own, 1) if own else None, "method": "this process only (no /proc)"}
        rows = [{**r, "peak_rss_mb": round(r["peak_rss_mb"], 1), "hwm_mb": round(r["hwm_mb"], 1)}
                for r in self.processes.values() if r["hwm_mb"] >= 1.0]
        return {
            "peak_rss_mb": round(self.tree_peak_mb, 1),
            "phases_peak_rss_mb": {k: round(v, 1) for k, v in self.phases.items()},
            "processes": rows,
            "sum_of_process_peaks_mb": round(sum(r["hwm_mb"] for r in rows), 1),
            "system_used_rise_mb": None if self.system_peak_mb is None else round(self.system_peak_mb, 1),
            "interval_s": self.interval,
            "samples": self.samples,
            "method": "sum of VmRSS over the process tree, sampled; per process also VmHWM",
        }

