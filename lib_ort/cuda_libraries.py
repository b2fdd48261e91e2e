"""Which native CUDA libraries ORT Turbo loads itself, in which order, and which ones the process holds.

onnxruntime-gpu 1.19+ links cuDNN 9. Beside a torch that carries cuDNN 8 (torch 2.1.2, the WebUI's pin),
install.py puts cuDNN 9 into a side folder (``runtime-libs/cudnn9-cu12``); it must be in the process
before ONNX Runtime's CUDA provider loads. ``onnxruntime.preload_dlls`` cannot be relied on for that: on
Windows it returns early whenever torch is imported ("Skip loading CUDA and cuDNN DLLs since torch is
imported"), whatever ``directory`` says; it prints instead of raising; and ORT 1.19/1.20, inside the
installer's range, do not have it. So the loading is a plan (absolute paths, in dependency order), carried
out with ctypes and checked afterwards against what the process really mapped.

Both majors of cuDNN in one process have different file names (``libcudnn.so.8``/``.so.9``,
``cudnn64_8.dll``/``cudnn64_9.dll``) and versioned symbols; that they coexist is plausible but has not
been run on a GPU yet (the GPU check prints which files got loaded).

TensorRT: onnxruntime-gpu lists ``TensorrtExecutionProvider`` whether or not TensorRT is installed and then
quietly builds a CUDA session; :func:`tensorrt_library` says whether ``libnvinfer`` loads at all. Both are
looked at only when a session is made, never at import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import os
from pathlib import Path

#: cuDNN 9's files per OS, the ones the others depend on first (graph), the entry library last: each
#: sub-library is then already in the process under its own name when cuDNN looks it up by name.
CUDNN9_FILES = {
    "nt": ("cudnn_graph64_9.dll", "cudnn_engines_precompiled64_9.dll", "cudnn_engines_runtime_compiled64_9.dll",
           "cudnn_engines_tensor_ir64_9.dll", "cudnn_heuristic64_9.dll", "cudnn_ops64_9.dll", "cudnn_adv64_9.dll",
           "cudnn64_9.dll"),
    "posix": ("libcudnn_graph.so.9", "libcudnn_engines_precompiled.so.9", "libcudnn_engines_runtime_compiled.so.9",
              "libcudnn_engines_tensor_ir.so.9", "libcudnn_heuristic.so.9", "libcudnn_ops.so.9", "libcudnn_adv.so.9",
              "libcudnn.so.9"),
}

#: the entry library: the one that must be there, and the one checked after loading
CUDNN9_MAIN = {"nt": "cudnn64_9.dll", "posix": "libcudnn.so.9"}

#: TensorRT's core library names, newest first (TensorRT 10, then 8)
NVINFER_NAMES = {"nt": ("nvinfer_10.dll", "nvinfer.dll"), "posix": ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")}


@dataclasses.dataclass(frozen=True)
class DllLoadPlan:
    os_name: str  # "nt" or "posix"
    #: folders added with os.add_dll_directory first (Windows only; there the dependencies of a DLL loaded
    #: by absolute path are searched in them)
    dll_directories: tuple
    files: tuple  # absolute paths, loaded in this order
    expect_loaded: tuple  # file names that must show up among the process's loaded libraries afterwards

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cudnn9_load_plan(directories, *, os_name: str | None = None, exists=os.path.exists) -> DllLoadPlan:
    """What to load from side folders holding cuDNN 9 (``.../nvidia/cudnn/lib`` or ``bin``). Files a
    folder lacks are skipped (cuDNN 9 minor versions differ in their engine libraries), except the entry
    library: a folder without it is an error, not a silent no-op."""
    os_name = os_name or os.name
    join = (lambda d, f: str(d).rstrip("\\/") + "\\" + f) if os_name == "nt" else (lambda d, f: os.path.join(str(d), f))
    files: list[str] = []
    for directory in directories:
        main = join(directory, CUDNN9_MAIN[os_name])
        if not exists(main):
            from .errors import OrtTurboError

            raise OrtTurboError(f"the cuDNN 9 folder {directory} has no {CUDNN9_MAIN[os_name]}; "
                                "delete it and restart the WebUI so that install.py fetches it again")
        files += [join(directory, f) for f in CUDNN9_FILES[os_name] if exists(join(directory, f))]
    return DllLoadPlan(os_name, tuple(str(d) for d in directories) if os_name == "nt" else (),
                       tuple(files), (CUDNN9_MAIN[os_name],) if files else ())


_DLL_DIRECTORIES: list = []  # the handles of os.add_dll_directory, held for the life of the process


def carry_out(plan: DllLoadPlan, *, load=None) -> list[str]:
    """Load the plan's files by absolute path; returns the paths loaded. ``load`` replaces ctypes (tests)."""
    if plan.os_name != os.name:
        raise ValueError(f"a plan for {plan.os_name!r} cannot be carried out on {os.name!r}")
    if load is None:
        mode = getattr(os, "RTLD_GLOBAL", 0)
        load = lambda path: ctypes.CDLL(path, mode=mode)  # noqa: E731
    for directory in plan.dll_directories:  # kept for the process: cuDNN loads its engines lazily
        _DLL_DIRECTORIES.append(os.add_dll_directory(directory))
    loaded = []
    for path in plan.files:
        load(path)
        loaded.append(path)
    return loaded


def loaded_libraries(name_part: str) -> list[str]:
    """Paths of the loaded shared libraries whose file name contains ``name_part`` (e.g. ``"cudnn"``):
    from ``/proc/self/maps`` on Linux, the loaded module of each known cuDNN name on Windows."""
    if os.name == "nt":
        return _windows_modules(name_part)
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    found = []
    for line in maps.read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/") and name_part in os.path.basename(parts[5]):
            if parts[5] not in found:
                found.append(parts[5])
    return found


def _windows_modules(name_part: str) -> list[str]:
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.GetModuleHandleW.restype = ctypes.c_void_p
    found = []
    for name in {f for files in (CUDNN9_FILES["nt"], ("cudnn64_8.dll",), NVINFER_NAMES["nt"]) for f in files}:
        if name_part not in name:
            continue
        handle = kernel32.GetModuleHandleW(name)
        if handle:
            buffer = ctypes.create_unicode_buffer(1024)
            kernel32.GetModuleFileNameW(ctypes.c_void_p(handle), buffer, 1024)
            found.append(buffer.value)
    return sorted(found)


def check_loaded(plan: DllLoadPlan, loaded: list[str]) -> list[str]:
    """The plan's expected file names that are missing from ``loaded`` (paths of loaded libraries)."""
    names = {os.path.basename(p).lower() for p in loaded}
    return [f for f in plan.expect_loaded if f.lower() not in names]


def load_side_cudnn9(directories) -> dict:
    """Carry out the cuDNN 9 plan for ``directories`` and check it; what happened, as data."""
    from .errors import OrtTurboError

    plan = cudnn9_load_plan(directories)
    if not plan.files:
        return {"plan": plan.to_dict(), "loaded": [], "cudnn_in_process": loaded_libraries("cudnn")}
    try:
        carry_out(plan)
    except OSError as exc:
        raise OrtTurboError(f"could not load cuDNN 9 from {', '.join(directories)}: {exc}") from exc
    in_process = loaded_libraries("cudnn")
    missing = check_loaded(plan, in_process)
    if missing:
        raise OrtTurboError(f"cuDNN 9 was loaded from {', '.join(directories)} but {', '.join(missing)} is not "
                            f"in the process afterwards (loaded: {', '.join(in_process) or 'no cuDNN'})")
    return {"plan": plan.to_dict(), "loaded": list(plan.files), "cudnn_in_process": in_process}


def _try_load(name: str) -> bool:
    try:
        ctypes.CDLL(name)
        return True
    except OSError:
        return False


def find_tensorrt(load=_try_load) -> str | None:
    """The first TensorRT core library that ``load(name)`` can load, or None; ``find_library`` covers
    installs outside the loader's default path."""
    for name in NVINFER_NAMES["nt" if os.name == "nt" else "posix"]:
        if load(name):
            return name
    found = ctypes.util.find_library("nvinfer_10" if os.name == "nt" else "nvinfer")
    return found if found and load(found) else None


@functools.lru_cache(maxsize=1)
def tensorrt_library() -> str | None:
    """:func:`find_tensorrt` once per process, when a TensorRT session is asked for (never at import)."""
    return find_tensorrt()
