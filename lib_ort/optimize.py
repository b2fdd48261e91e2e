"""Run an Olive recipe on an exported UNet in a child process and register the result.

The child (``lib_ort.olive_child``) runs in a *toolchain*: an interpreter and an environment given
as parameters. In the WebUI that is a separate environment holding Olive and its dependencies
(they clash with the WebUI's pins); in tests and on the command line it is this interpreter.
Olive's memory (16+ GB for a full-size UNet) is returned to the system when the child exits, and a
failed or killed child leaves no artefact, only an error saying why.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import __version__
from .errors import OptimizationError
from .export import MODEL_FILE, WEIGHTS_FILE, load_export_info
from .providers import provider
from .recipes import OLIVE_VERSION, get_recipe, olive_config
from .registry import Artefact, Registry

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """Where the optimization child runs: an interpreter and extra environment variables."""

    python: str = sys.executable
    env: dict | None = None

    def environment(self) -> dict:
        env = dict(os.environ)
        env.update(self.env or {})
        # the child imports lib_ort.olive_child from this checkout, whatever its interpreter
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        env["OLIVE_DISABLE_TELEMETRY"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env


def default_shape_ranges(spatial_multiple: int) -> dict:
    """Latent sizes 64..2048 px, batch up to 16 rows (8 images with CFG), up to 8 prompt chunks."""
    return {"batch": [1, 16], "height": [spatial_multiple, 256], "width": [spatial_multiple, 256],
            "sequence": [1, 77 * 8]}


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_olive_child(job: dict, work: Path, label: str, toolchain: Toolchain, *, timeout: float | None = None,
                    progress=None) -> None:
    """Run ``lib_ort.olive_child`` on ``job`` in ``work`` (its log: ``work/olive.log``); raise
    ``OptimizationError`` saying why if it fails, is killed or runs past ``timeout``."""
    report = progress or (lambda fraction, message: None)
    log_path = work / "olive.log"
    (work / "job.json").write_text(json.dumps(job, indent=2))
    cmd = [toolchain.python, "-m", "lib_ort.olive_child", str(work / "job.json")]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=toolchain.environment(),
                                 cwd=str(work))
        try:
            while child.poll() is None:
                elapsed = time.perf_counter() - start
                if timeout is not None and elapsed > timeout:
                    child.kill()
                    child.wait()
                    raise OptimizationError(f"the {label} optimization took longer than {timeout:.0f} s and was stopped")
                report(min(0.95, 0.1 + elapsed / 600), f"optimizing for {label} with Olive ({elapsed:.0f} s)")
                time.sleep(0.5)
        except BaseException:
            if child.poll() is None:
                child.kill()
                child.wait()
            raise
    if child.returncode != 0:
        if child.returncode < 0:
            name = signal.Signals(-child.returncode).name
            why = f"was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
        else:
            why = f"failed (exit code {child.returncode})"
        raise OptimizationError(f"the {label} optimization {why}. Last lines of its log:\n{_tail(log_path)}")


def optimize_export(export_folder: str | os.PathLike, ep: str, registry: Registry, *, checkpoint: dict,
                    toolchain: Toolchain = Toolchain(), shape_ranges: dict | None = None,
                    timeout: float | None = None, progress=None, recipe: dict | None = None) -> Artefact:
    """Optimize the export in ``export_folder`` for ``ep`` and register it for ``checkpoint``.

    ``checkpoint`` is ``{"hash": sha256, "name": display name}``. ``progress`` is an optional
    ``callable(fraction, message)``, called about once a second while the child runs. ``recipe``
    replaces ``ep``'s own (tests: an fp16 graph the CPU provider runs).
    """
    report = progress or (lambda fraction, message: None)
    export_folder = Path(export_folder)
    info = load_export_info(export_folder)
    recipe = recipe or get_recipe(ep)
    work = registry.new_work_folder(f"optimize-{ep}")
    log_path = work / "olive.log"
    try:
        olive_out = work / "olive-out"
        job = {
            "ep": ep,
            "work_dir": str(work),
            "weights_file": WEIGHTS_FILE,
            "fp32_time_embedding": recipe.get("fp32_time_embedding"),
            "placement_provider": recipe["provider"],
            "olive_config": olive_config(recipe, str(export_folder), MODEL_FILE, str(olive_out), str(work / "cache")),
        }
        start = time.perf_counter()
        run_olive_child(job, work, ep, toolchain, timeout=timeout, progress=report)
        result = json.loads((work / "result.json").read_text())
        model_dir = work / "model"
        for leftover in ("cache", "olive-out"):
            shutil.rmtree(work / leftover, ignore_errors=True)
        # the artefact's folder is the model folder; keep the log beside the manifest
        shutil.move(str(log_path), model_dir / "olive.log")
        (model_dir / "job.json").unlink(missing_ok=True)
        data_files = [WEIGHTS_FILE] if (model_dir / WEIGHTS_FILE).exists() else []
        manifest = {
            "checkpoint": dict(checkpoint),
            "ep": ep,
            "provider": recipe["provider"],
            "precision": recipe["precision"],
            "family": info["family"],
            "io": info["io"],
            "input_names": info["input_names"],
            "output_name": info["output_name"],
            "io_types": result["io_types"],
            "shape_ranges": shape_ranges or default_shape_ranges(info["io"]["spatial_multiple"]),
            "opset": info["opset"],
            "model_file": MODEL_FILE,
            "data_files": data_files,
            "recipe": recipe,
            "fused_ops": result["fused_ops"],
            "fp32_nodes": result.get("fp32_nodes", []),
            # Memcpy nodes in the graph ORT optimized for the provider (None: the toolchain's ORT lacks it)
            "placement": result.get("placement"),
            "min_runtime_ort": provider(ep).min_ort,
            "versions": {"torch": info["torch"], "olive_expected": OLIVE_VERSION, "ort_turbo": __version__,
                         **result["versions"]},
            "timings": {"export_s": info.get("export_s"), "optimize_s": round(time.perf_counter() - start, 2)},
        }
        # move the model folder out of the work folder, then drop the work folder
        staged = registry.new_work_folder(f"stage-{ep}")
        staged.rmdir()
        os.replace(model_dir, staged)
        shutil.rmtree(work, ignore_errors=True)
        work = staged
        artefact = registry.commit(staged, manifest)
        report(1.0, f"optimized for {ep}: {artefact.id}")
        return artefact
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
