"""Export → optimize → artefact for any model (``lib_ort.parts``): the one entry point the command line,
the benchmark and the WebUI tab share.

A UNet's raw export is cached by checkpoint hash (``exports/``: SDXL takes minutes to trace); a VAE's is
made in a scratch folder and dropped (it traces in seconds).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from torch import nn

from .errors import ArtefactError
from .export import DEFAULT_OPSET, export_model, load_export_info
from .optimize import Toolchain, optimize_export
from .parts.base import Model
from .parts.unet import UNET
from .parts.vae import VAE
from .registry import EXPORTS, Artefact, Registry

log = logging.getLogger(__name__)


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
    """The raw fp32 UNet export of ``model`` for ``checkpoint``: reused when present, else made now."""
    folder = export_folder(registry, checkpoint["hash"], opset)
    if (folder / "export.json").exists():
        return folder, True
    export_model(UNET, model, folder, opset=opset, progress=progress)
    return folder, False


def find_artefact(model: Model, registry: Registry, checkpoint_hash: str, ep: str, precision: str | None = None,
                  vae_hash: str | None = None) -> Artefact | None:
    """The valid artefact of ``model`` for this checkpoint (and VAE) and provider; None if none;
    ``ArtefactError`` if the registered one is broken."""
    folder = registry.find(checkpoint_hash, ep, precision, kind=model.kind, vae_hash=vae_hash)
    return None if folder is None else registry.load(folder, checkpoint_hash, vae_hash=vae_hash)


def find_vae_artefact(registry: Registry, checkpoint_hash: str, vae_hash: str, ep: str,
                      precision: str | None = None) -> Artefact | None:
    return find_artefact(VAE, registry, checkpoint_hash, ep, precision, vae_hash)


def _reusable(model: Model, registry: Registry, checkpoint: dict, ep: str, precision: str | None,
              vae_record: dict | None, recipe: dict | None) -> Artefact | None:
    """The registered artefact when it is valid and made by ``recipe`` (when given); else None, saying why."""
    try:
        found = find_artefact(model, registry, checkpoint["hash"], ep, precision,
                              vae_record["hash"] if vae_record else None)
    except ArtefactError as exc:
        log.warning("[ORT Turbo] making the %s artefact again: %s", model.kind, exc)
        return None
    if found is not None and recipe is not None and found.manifest["recipe"] != recipe:
        return None
    return found


def _optimize(model: Model, export_dir: Path, registry: Registry, checkpoint: dict, ep: str, precision: str | None,
              vae_record: dict | None, report, **kwargs) -> Artefact:
    share = model.export_share
    return optimize_export(export_dir, ep, registry, checkpoint=checkpoint, model=model, precision=precision,
                           vae=vae_record, progress=lambda f, m: report(share + (1 - share) * f, m), **kwargs)


def export_needed(registry: Registry, checkpoint: dict, ep: str, *, opset: int = DEFAULT_OPSET,
                  force: bool = False) -> bool:
    """Whether ``prepare`` would trace the model: no export yet, and no valid artefact (or ``force``).

    The command line and the benchmark ask first, export, then drop their model before ``prepare``
    optimizes: the optimization child then has the machine's memory to itself."""
    if (export_folder(registry, checkpoint["hash"], opset) / "export.json").exists():
        return False
    return force or _reusable(UNET, registry, checkpoint, ep, None, None, None) is None


def prepare(model: nn.Module | None, registry: Registry, checkpoint: dict, ep: str, *,
            toolchain: Toolchain = Toolchain(), opset: int = DEFAULT_OPSET, keep_export: bool = True,
            force: bool = False, progress=None, timeout: float | None = None) -> Prepared:
    """A UNet artefact of ``model`` for ``ep``: the registered one if valid (unless ``force``), else new.

    ``model`` may be None when the export for ``checkpoint`` already exists.
    ``progress(fraction, message)``: export takes the first 40 %, optimization the rest.
    """
    report = progress or (lambda fraction, message: None)
    folder = export_folder(registry, checkpoint["hash"], opset)
    found = None if force else _reusable(UNET, registry, checkpoint, ep, None, None, None)
    if found is not None:
        t = found.manifest.get("timings", {})
        kept = folder if (folder / "export.json").exists() else None
        return Prepared(found, kept, t.get("export_s"), t.get("optimize_s"), True, True)
    if model is None:
        if not (folder / "export.json").exists():
            raise ValueError("no model given and no export or valid artefact for this checkpoint")
        export_cached = True
    else:
        folder, export_cached = ensure_export(model, registry, checkpoint, opset=opset,
                                              progress=lambda f, m: report(UNET.export_share * f, m))
    export_s = load_export_info(folder).get("export_s")
    artefact = _optimize(UNET, folder, registry, checkpoint, ep, None, None, report, toolchain=toolchain,
                         timeout=timeout)
    if model is not None:
        record_weight_map(model, artefact)
    if not keep_export:
        shutil.rmtree(folder, ignore_errors=True)
        folder = None
    return Prepared(artefact, folder, export_s, artefact.manifest["timings"]["optimize_s"], export_cached, False)


def record_weight_map(model: nn.Module, artefact: Artefact) -> None:
    """Save where each of ``model``'s parameters lives in the artefact's graph (``weight_map``), which Lora
    networks on the ONNX UNet need. Without a model at hand (the WebUI optimizes after its trace) the WebUI
    derives it on first use; a failure here is logged, never fatal, for the same reason."""
    from .onnx_weights import Weights
    from .weight_map import WeightMap

    try:
        params = {k: v.detach().float().cpu().numpy() for k, v in model.named_parameters()}
        WeightMap.derive(params, Weights(artefact.model_path)).save(artefact.folder)
    except Exception as exc:
        log.warning("[ORT Turbo] no weight map for %s (%s: %s); it is derived on first use", artefact.id,
                    type(exc).__name__, exc)


def prepare_vae(vae: nn.Module | None, registry: Registry, checkpoint: dict, vae_record: dict, ep: str,
                precision: str, *, toolchain: Toolchain = Toolchain(), recipe: dict | None = None,
                force: bool = False, progress=None, timeout: float | None = None) -> Artefact:
    """The VAE artefact for ``(checkpoint, vae_record, ep, precision)``: the registered one when valid
    (unless ``force``), else exported from ``vae`` and optimized now. The raw export is not kept."""
    report = progress or (lambda fraction, message: None)
    found = None if force else _reusable(VAE, registry, checkpoint, ep, precision, vae_record, recipe)
    if found is not None:
        return found
    scratch = registry.new_work_folder("export-vae")
    try:
        export_model(VAE, vae, scratch / "export", progress=lambda f, m: report(VAE.export_share * f, m))
        return _optimize(VAE, scratch / "export", registry, checkpoint, ep, precision, vae_record, report,
                         toolchain=toolchain, recipe=recipe, timeout=timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
