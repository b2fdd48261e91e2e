"""The machine's memory and disk as the optimization sees them: what is free, what an export and an
optimization of a model of a given size need, and handing freed memory back to the system.

Why: a full-size SDXL UNet is 10.3 GB in fp32. An optimization started without the memory it needs is
killed by the kernel's OOM killer minutes later (or takes the user's WebUI down with it), and an export
onto a full disk fails half-written. Both are checked before any work, from the model's size and the
factors measured on the full-size models (docs/benchmarks.md), with a message that gives the numbers.

Linux reads /proc/meminfo; elsewhere psutil (which the WebUI installs) answers, and where neither can,
the check is skipped rather than guessed. The functions that read the machine are parameters of the
checks, so tests can give any figures.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import shutil
from pathlib import Path

from . import heap
from .errors import DiskFull, NotEnoughMemory

MB = 2**20

#: Peak resident memory of the optimization child per byte of the export (weights file), per recipe, each
#: the largest measured on the full-size UNets, rounded up (docs/benchmarks.md, "Memory"). One factor for
#: all would refuse CPU exports that fit (1.35 is the cuda recipe's) or pass OpenVINO ones that do not.
OPTIMIZE_FACTORS = {
    "cpu": 0.55,  # ORT's transformers pass, weights on disk: SD-Turbo 0.21, SDXL-Turbo 0.50
    # the same pass in fp16: the channels-last and packed weights the fusions make live in memory, and the
    # fusions' shape inference copies them: SD-Turbo 0.99, SDXL-Turbo 1.31
    "cuda": 1.35,
    "dml": 1.35,  # not measured: the cuda recipe's pass with other fusion options, so its factor
    # Olive's OnnxPeepholeOptimizer loads the whole model with its weights and writes a copy: SD-Turbo 2.17
    # (openvino; tensorrt runs the same pass); SDXL-Turbo not measured (on 24 GB it would need 23 GB)
    "openvino": 2.2,
    "tensorrt": 2.2,
}
#: fixed part of the child's peak: Python, ONNX Runtime, Olive, sympy
OPTIMIZE_BASE_MB = 600
#: the raw export on disk per byte of fp32 weights (the weights once, the graph and its staging copy)
EXPORT_DISK_FACTOR = 1.1
#: an optimized artefact on disk per byte of fp32 weights (fp32 recipes: the same size; fp16: half)
ARTEFACT_DISK_FACTOR = 1.0
#: headroom kept free on the disk after the export, so the system and the WebUI keep working
DISK_HEADROOM_MB = 1024


def mem_available_mb() -> float | None:
    """What the kernel says can be allocated without swapping (MemAvailable), in MiB; None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import psutil

        return psutil.virtual_memory().available / MB
    except Exception:
        return None


def process_memory_mb(pid: int) -> tuple[float, float] | None:
    """(resident now, peak resident) of process ``pid`` in MiB, from /proc (the peak is the kernel's
    high-water mark, which no sampling can miss); None when the process is gone or /proc is absent."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024.0, int(fields["VmHWM"].split()[0]) / 1024.0
    except (OSError, KeyError, ValueError):  # gone, not Linux, or a zombie (no memory fields)
        return None


def disk_free_mb(path) -> float:
    """Free space (MiB) on the disk that holds ``path`` (its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / MB


def release_memory() -> None:
    """Give memory freed by Python back to the system now: collect garbage, then hand glibc's free heap
    pages back (large freed tensors otherwise stay in the process's resident size; see ``heap``)."""
    gc.collect()
    heap.trim()


@dataclasses.dataclass(frozen=True)
class Need:
    """What optimizing a model of ``weights_mb`` fp32 weights with ``ep``'s recipe needs (``ep`` None: the
    most any recipe needs)."""

    weights_mb: float
    ep: str | None = None

    @property
    def optimize_mb(self) -> float:
        factor = OPTIMIZE_FACTORS[self.ep] if self.ep is not None else max(OPTIMIZE_FACTORS.values())
        return OPTIMIZE_BASE_MB + factor * self.weights_mb

    @property
    def export_disk_mb(self) -> float:
        return EXPORT_DISK_FACTOR * self.weights_mb + DISK_HEADROOM_MB

    @property
    def artefact_disk_mb(self) -> float:
        return ARTEFACT_DISK_FACTOR * self.weights_mb + DISK_HEADROOM_MB


def folder_weights_mb(folder) -> float:
    """Size (MiB) of an export's files: the fp32 weights and the graph, every part included."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / MB


#: set (to anything) to start an optimization whatever the memory check says
SKIP_MEMORY_CHECK_ENV = "ORT_TURBO_SKIP_MEMORY_CHECK"


def check_memory(need: Need, what: str, *, available=None) -> float | None:
    """Raise ``NotEnoughMemory`` when the machine has less memory available than optimizing ``what``
    needs; returns what is available (None when unknown or skipped: not checked).

    ``available`` (default ``mem_available_mb``, looked up at each call so tests can replace it)."""
    if os.environ.get(SKIP_MEMORY_CHECK_ENV):
        return None
    have = (available or mem_available_mb)()
    if have is not None and have < need.optimize_mb:
        raise NotEnoughMemory(
            f"optimizing {what} needs about {need.optimize_mb / 1024:.1f} GB of free memory "
            f"({need.weights_mb / 1024:.1f} GB of fp32 weights), and only {have / 1024:.1f} GB is available. "
            "Close other programs (or unload the checkpoint in the WebUI) and try again; nothing was started "
            f"(set {SKIP_MEMORY_CHECK_ENV}=1 to try anyway).",
            needed_mb=need.optimize_mb, available_mb=have)
    return have


def check_disk(folder, need_mb: float, what: str, *, free=None) -> float:
    """Raise ``DiskFull`` when the disk holding ``folder`` has less than ``need_mb`` free; returns the free
    MiB. ``free`` (default ``disk_free_mb``, looked up at each call so tests can replace it)."""
    have = (free or disk_free_mb)(folder)
    if have < need_mb:
        raise DiskFull(f"{what} needs about {need_mb / 1024:.1f} GB of free disk space in {folder}, and only "
                       f"{have / 1024:.1f} GB is free. Free some space (or delete old artefacts) and try again; "
                       "nothing was written.")
    return have


def tensor_bytes_mb(module) -> float:
    """fp32 size (MiB) of a torch module's parameters and buffers: what its export writes."""
    return sum(t.numel() * 4 for t in list(module.parameters()) + list(module.buffers())) / MB


def oom_killed(returncode: int) -> bool:
    """Whether a child's exit status is the OOM killer's SIGKILL (POSIX: -9)."""
    return os.name == "posix" and returncode == -9
