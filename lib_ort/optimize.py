"""Run an Olive recipe on an exported model (any ``lib_ort.parts`` model) in a child process and register it.

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

from . import __version__, providers
from .errors import OptimizationError
from .export import MODEL_FILE, WEIGHTS_FILE
from .parts.base import Model
from .parts.unet import UNET
from .providers import provider
from .recipes import OLIVE_VERSION, olive_config
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
                    model: Model = UNET, precision: str | None = None, vae: dict | None = None,
                    toolchain: Toolchain = Toolchain(), shape_ranges: dict | None = None,
                    timeout: float | None = None, progress=None, recipe: dict | None = None) -> Artefact:
    """Optimize every part of ``model``'s export in ``export_folder`` for ``ep`` and register one artefact.

    ``checkpoint`` (and, for a VAE, ``vae``) is ``{"hash": sha256, "name": display name}``. One child
    optimizes every part (Olive's start-up is most of a small model's time), and the artefact is
    committed only when all are done. ``progress`` is an optional ``callable(fraction, message)``, called
    about once a second while the child runs. ``recipe`` replaces the provider's own (tests: an fp16
    graph the CPU provider runs). ``shape_ranges`` replaces the UNet's default TensorRT profile.
    """
    report = progress or (lambda fraction, message: None)
    export_folder = Path(export_folder)
    info = json.loads((export_folder / model.info_file).read_text())
    parts = model.exported_parts(info)
    recipe = recipe or model.recipe(ep, precision)
    slug = "" if model.kind == "unet" else f"{model.kind}-"
    label = providers.label(ep) if model.kind == "unet" else f"{providers.label(ep)} {model.kind.upper()}"
    work = registry.new_work_folder(f"optimize-{slug}{ep}")
    try:
        jobs = []
        for part in parts:
            part_work = part.path(work)
            part_work.mkdir(exist_ok=True)
            jobs.append({"ep": ep, "work_dir": str(part_work), "weights_file": WEIGHTS_FILE, **part.child_job(recipe),
                         "olive_config": olive_config(recipe, str(part.path(export_folder)), MODEL_FILE,
                                                      str(part_work / "olive-out"), str(work / "cache"))})
        start = time.perf_counter()
        run_olive_child({"ep": ep, "parts": jobs}, work, label, toolchain, timeout=timeout, progress=report)
        # move each part's model folder out of the work folder, then drop the work folder
        staged = registry.new_work_folder(f"stage-{slug}{ep}")
        results, files = {}, []
        for part in parts:
            results[part.name] = json.loads((part.path(work) / "result.json").read_text())
            if not part.folder:
                staged.rmdir()
            os.replace(part.path(work) / "model", part.path(staged))
            files.append(part.file(MODEL_FILE))
            if (part.path(staged) / WEIGHTS_FILE).exists():
                files.append(part.file(WEIGHTS_FILE))
        # the artefact's folder keeps the log beside the manifest
        shutil.move(str(work / "olive.log"), staged / "olive.log")
        shutil.rmtree(work, ignore_errors=True)
        work = staged
        manifest = {
            "checkpoint": dict(checkpoint),
            "ep": ep,
            "provider": recipe["provider"],
            "precision": recipe["precision"],
            **model.manifest(info, results, files, {"shape_ranges": shape_ranges, "vae": vae}),
            "opset": info["opset"],
            "model_file": files[0],
            "data_files": files[1:],
            "recipe": recipe,
            "min_runtime_ort": provider(ep).min_ort,
            "versions": {"torch": info["torch"], "olive_expected": OLIVE_VERSION, "ort_turbo": __version__,
                         **results[parts[-1].name]["versions"]},
            "timings": {"export_s": info.get("export_s"), "optimize_s": round(time.perf_counter() - start, 2)},
        }
        artefact = registry.commit(staged, manifest)
        report(1.0, f"{model.kind} optimized for {providers.label(ep)} "
                    f"({recipe['precision']}): {artefact.id}")
        return artefact
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
