"""VAE export → Olive recipe → artefact, in the same registry as the UNets.

A VAE artefact is keyed by the checkpoint's hash *and* the VAE's own hash: the VAE the WebUI runs is
either the checkpoint's own or one picked in its VAE dropdown, and an artefact of one must never
decode for another. Its folder holds ``decoder/`` and ``encoder/`` (``model.onnx`` + ``weights.pb``
each) and a manifest of kind ``"vae"``. Both parts are optimized by one optimization child (Olive's
start-up is most of a small model's time), and the artefact is committed only when both are done.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from torch import nn

from . import __version__
from .export import MODEL_FILE, WEIGHTS_FILE
from .optimize import Toolchain, run_olive_child
from .providers import provider
from .recipes import OLIVE_VERSION, get_vae_recipe, olive_config
from .registry import Artefact, Registry
from .vae_export import PART_IO, PARTS, export_vae, load_vae_export_info

KIND = "vae"


def find_vae_artefact(registry: Registry, checkpoint_hash: str, vae_hash: str, ep: str,
                      precision: str | None = None) -> Artefact | None:
    """The valid VAE artefact for this checkpoint, VAE and provider; None if none; ArtefactError if broken."""
    folder = registry.find(checkpoint_hash, ep, precision, kind=KIND, vae_hash=vae_hash)
    return None if folder is None else registry.load(folder, checkpoint_hash, vae_hash=vae_hash)


def optimize_vae_export(export_dir: str | os.PathLike, ep: str, precision: str, registry: Registry, *,
                        checkpoint: dict, vae: dict, toolchain: Toolchain = Toolchain(), recipe: dict | None = None,
                        timeout: float | None = None, progress=None) -> Artefact:
    """Optimize every part of the VAE export in ``export_dir`` and register one artefact.

    ``checkpoint`` and ``vae`` are ``{"hash": sha256, "name": display name}``. ``recipe`` replaces the
    provider's VAE recipe (tests use it to make an fp16 graph that the CPU provider runs).
    """
    export_dir = Path(export_dir)
    info = load_vae_export_info(export_dir)
    recipe = recipe or get_vae_recipe(ep, precision)
    work = registry.new_work_folder(f"optimize-vae-{ep}")
    try:
        subjobs = []
        for part in info["parts"]:
            part_work = work / part
            part_work.mkdir()
            subjobs.append({"ep": ep, "work_dir": str(part_work), "weights_file": WEIGHTS_FILE,
                            "olive_config": olive_config(recipe, str(export_dir / part), MODEL_FILE,
                                                         str(part_work / "olive-out"), str(work / "cache"))})
        start = time.perf_counter()
        run_olive_child({"ep": ep, "parts": subjobs}, work, f"{ep} VAE", toolchain, timeout=timeout,
                        progress=progress)
        staged = registry.new_work_folder(f"stage-vae-{ep}")
        parts, versions, files = {}, {}, []
        for part in info["parts"]:
            result = json.loads((work / part / "result.json").read_text())
            os.replace(work / part / "model", staged / part)
            model_file = f"{part}/{MODEL_FILE}"
            files.append(model_file)
            if (staged / part / WEIGHTS_FILE).exists():
                files.append(f"{part}/{WEIGHTS_FILE}")
            in_name, out_name = PART_IO[part]
            parts[part] = {"model_file": model_file, "input_name": in_name, "output_name": out_name,
                           "io_types": result["io_types"], "fused_ops": result["fused_ops"]}
            versions = result["versions"]
        shutil.move(str(work / "olive.log"), staged / "olive.log")
        shutil.rmtree(work, ignore_errors=True)
        work = staged
        manifest = {
            "kind": KIND,
            "checkpoint": dict(checkpoint),
            "vae": dict(vae),
            "ep": ep,
            "provider": recipe["provider"],
            "precision": recipe["precision"],
            "description": info["vae"],
            "parts": parts,
            "opset": info["opset"],
            "model_file": files[0],
            "data_files": files[1:],
            "recipe": recipe,
            "min_runtime_ort": provider(ep).min_ort,
            "versions": {"torch": info["torch"], "olive_expected": OLIVE_VERSION, "ort_turbo": __version__, **versions},
            "timings": {"export_s": info.get("export_s"), "optimize_s": round(time.perf_counter() - start, 2)},
        }
        artefact = registry.commit(staged, manifest)
        if progress:
            progress(1.0, f"VAE optimized for {ep} ({recipe['precision']}): {artefact.id}")
        return artefact
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def prepare_vae(vae: nn.Module, registry: Registry, checkpoint: dict, vae_record: dict, ep: str, precision: str, *,
                toolchain: Toolchain = Toolchain(), recipe: dict | None = None, force: bool = False, progress=None,
                timeout: float | None = None) -> Artefact:
    """The VAE artefact for ``(checkpoint, vae_record, ep, precision)``: the registered one when valid
    (unless ``force``), else exported from ``vae`` and optimized now. The raw export is not kept: a
    VAE exports in seconds."""
    report = progress or (lambda fraction, message: None)
    if not force:
        try:
            found = find_vae_artefact(registry, checkpoint["hash"], vae_record["hash"], ep, precision)
            if found is not None and (recipe is None or found.manifest["recipe"] == recipe):
                return found
        except Exception:
            pass  # invalid: make it again below
    scratch = registry.new_work_folder("export-vae")
    try:
        export_vae(vae, scratch / "export", parts=PARTS, progress=lambda f, m: report(0.2 * f, m))
        return optimize_vae_export(scratch / "export", ep, precision, registry, checkpoint=checkpoint, vae=vae_record,
                                   toolchain=toolchain, recipe=recipe, timeout=timeout,
                                   progress=lambda f, m: report(0.2 + 0.8 * f, m))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
