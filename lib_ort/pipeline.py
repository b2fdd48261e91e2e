"""Export → optimize → artefact, with the export cached by checkpoint hash.

The one entry point the command line, the benchmark and the WebUI tab share.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from torch import nn

from .export import DEFAULT_OPSET, export_unet, load_export_info
from .optimize import Toolchain, optimize_export
from .registry import EXPORTS, Artefact, Registry


def export_folder(registry: Registry, checkpoint_hash: str, opset: int = DEFAULT_OPSET) -> Path:
    return registry.root / EXPORTS / f"{checkpoint_hash[:12]}-opset{opset}"


@dataclasses.dataclass
class Prepared:
    artefact: Artefact
    export_folder: Path | None
    export_s: float | None
    optimize_s: float | None
    export_cached: bool
    artefact_cached: bool


def ensure_export(model: nn.Module, registry: Registry, checkpoint: dict, *, opset: int = DEFAULT_OPSET,
                  progress=None) -> tuple[Path, bool]:
    """The raw fp32 export of ``model`` for ``checkpoint``: reused when present, else made now."""
    folder = export_folder(registry, checkpoint["hash"], opset)
    if (folder / "export.json").exists():
        return folder, True
    export_unet(model, folder, opset=opset, progress=progress)
    return folder, False


def prepare(model: nn.Module | None, registry: Registry, checkpoint: dict, ep: str, *,
            toolchain: Toolchain = Toolchain(), opset: int = DEFAULT_OPSET, keep_export: bool = True,
            force: bool = False, progress=None, timeout: float | None = None) -> Prepared:
    """An artefact of ``model`` for ``ep``: the registered one if valid (unless ``force``), else new.

    ``model`` may be None when the export for ``checkpoint`` already exists.

    ``progress(fraction, message)``: export takes the first 40 %, optimization the rest.
    """
    report = progress or (lambda fraction, message: None)
    if not force:
        existing = registry.find(checkpoint["hash"], ep)
        if existing is not None:
            try:
                artefact = registry.load(existing, checkpoint["hash"])
                t = artefact.manifest.get("timings", {})
                folder = export_folder(registry, checkpoint["hash"], opset)
                kept = folder if (folder / "export.json").exists() else None
                return Prepared(artefact, kept, t.get("export_s"), t.get("optimize_s"), True, True)
            except Exception:
                pass  # invalid: make it again below
    folder = export_folder(registry, checkpoint["hash"], opset)
    if model is None:
        if not (folder / "export.json").exists():
            raise ValueError("no model given and no export or valid artefact for this checkpoint")
        export_cached = True
    else:
        folder, export_cached = ensure_export(model, registry, checkpoint, opset=opset,
                                              progress=lambda f, m: report(0.4 * f, m))
    export_s = load_export_info(folder).get("export_s")
    artefact = optimize_export(folder, ep, registry, checkpoint=checkpoint, toolchain=toolchain, timeout=timeout,
                               progress=lambda f, m: report(0.4 + 0.6 * f, m))
    if not keep_export:
        shutil.rmtree(folder, ignore_errors=True)
        folder = None
    return Prepared(artefact, folder, export_s, artefact.manifest["timings"]["optimize_s"], export_cached, False)
