"""What ORT Turbo writes where, and how to remove it again.

Everything the extension writes lives in two folders, never in the WebUI's site-packages:

* the **data folder** (``$ORT_TURBO_DATA``, else ``<extension>/data``):
  ``toolchain/`` — the Olive toolchain environment (olive-ai, onnx, onnxscript, a newer
  onnxruntime, pydantic 2, protobuf ≥ 4 …), used only by the optimization child process;
  ``runtime-libs/cudnn9-cu12/`` — cuDNN 9 for onnxruntime-gpu, only when torch carries cuDNN 8;
  ``trt-cache/`` — TensorRT's engines and timing cache (rebuilt on demand);
* the **artefact registry** (``$ORT_TURBO_HOME``, else ``<extension>/artefacts``): one folder per
  optimized UNet plus ``exports/`` (the fp32 ONNX exports they were made from).

The only thing installed into the WebUI's own environment is the ONNX Runtime package that
install.py chose (and its small dependencies). It is left in place on clean-up, since other
extensions may import ``onnxruntime`` too; docs/usage.md's Uninstall paragraph says how to remove it by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from .errors import OrtTurboError, ToolchainError

EXTENSION_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "ORT_TURBO_DATA"
#: suffix of the lock file beside the toolchain folder while it is built or deleted
LOCK = ".ort-turbo-building"
ARTEFACTS_ENV = "ORT_TURBO_HOME"
#: Written last into a folder we filled; a folder without it is half-made.
COMPLETE_MARKER = ".ort-turbo-complete.json"


@dataclasses.dataclass(frozen=True)
class Layout:
    """The extension's data folder and the places under it."""

    data: Path

    def __post_init__(self):
        object.__setattr__(self, "data", Path(self.data).absolute())

    @classmethod
    def default(cls) -> "Layout":
        return cls(Path(os.environ.get(DATA_ENV) or EXTENSION_ROOT / "data").absolute())

    @property
    def toolchain(self) -> Path:
        return self.data / "toolchain"

    @property
    def runtime_libs(self) -> Path:
        return self.data / "runtime-libs"

    @property
    def trt_cache(self) -> Path:
        return self.data / "trt-cache"

    def side_folder(self, name: str) -> Path:
        return self.runtime_libs / name


def default_artefacts_root() -> Path:
    return Path(os.environ.get(ARTEFACTS_ENV) or EXTENSION_ROOT / "artefacts").absolute()


def read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_marker(folder: Path, content: dict) -> None:
    tmp = folder / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True))
    os.replace(tmp, folder / COMPLETE_MARKER)


def remove_tree(folder: Path) -> None:
    """Remove a folder we own: rename it aside first, so a half-deleted tree never looks usable."""
    if not folder.exists():
        return
    aside = folder.with_name(f".deleting-{folder.name}-{time.time_ns()}")
    try:
        os.replace(folder, aside)
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)
    if aside.exists():
        raise OrtTurboError(f"could not delete {aside} completely (a file in use?); close the WebUI and delete it by hand")


def folder_size(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def usage(layout: Layout | None = None, artefacts_root: str | os.PathLike | None = None) -> dict:
    """Bytes used by each thing the extension wrote (for the tab's clean-up section)."""
    layout = layout or Layout.default()
    root = Path(artefacts_root) if artefacts_root else default_artefacts_root()
    return {"toolchain": folder_size(layout.toolchain), "runtime_libs": folder_size(layout.runtime_libs),
            "trt_cache": folder_size(layout.trt_cache), "artefacts": folder_size(root)}


@contextlib.contextmanager
def toolchain_lock(folder: Path, *, wait: bool = True, timeout: float = 3600):
    """One builder (or deleter) at a time; a lock left by a dead process goes stale after ``timeout``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.parent / f"{folder.name}{LOCK}"
    start = time.monotonic()
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            break
        except FileExistsError:
            try:
                age = time.time() - lock.stat().st_mtime
            except OSError:
                continue
            if age > timeout:
                lock.unlink(missing_ok=True)
                continue
            if not wait or time.monotonic() - start > timeout:
                raise ToolchainError(f"the Olive toolchain in {folder} is being built or deleted right now; try again when that is done")
            time.sleep(1.0)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def delete_toolchain(layout: Layout | None = None) -> int:
    """Delete the Olive toolchain; the next export builds it again. Returns the bytes freed."""
    layout = layout or Layout.default()
    with toolchain_lock(layout.toolchain, wait=False):
        freed = folder_size(layout.toolchain)
        remove_tree(layout.toolchain)
    return freed


def delete_trt_cache(layout: Layout | None = None) -> int:
    """Delete TensorRT's engine and timing caches; engines are built again at the next TensorRT session."""
    layout = layout or Layout.default()
    freed = folder_size(layout.trt_cache)
    remove_tree(layout.trt_cache)
    return freed


def delete_artefacts(artefacts_root: str | os.PathLike | None = None, layout: Layout | None = None) -> int:
    """Delete every artefact and export in the registry folder, and the TensorRT engines built from them
    (``layout``'s ``trt-cache``). Returns the bytes freed.

    Only entries the registry writes are touched (folders with a manifest, ``exports/`` and the
    registry's hidden temporary folders): a root pointed at the wrong folder loses nothing else.
    """
    from .registry import EXPORTS, MANIFEST

    root = Path(artefacts_root) if artefacts_root else default_artefacts_root()
    freed = delete_trt_cache(layout)
    if not root.is_dir():
        return freed
    for entry in root.iterdir():
        ours = entry.is_dir() and ((entry / MANIFEST).exists() or entry.name == EXPORTS or entry.name.startswith(".tmp-"))
        if ours:
            freed += folder_size(entry)
            remove_tree(entry)
    try:
        root.rmdir()  # only if nothing else was in it
    except OSError:
        pass
    return freed

