"""Run an Olive recipe on an exported model (any ``lib_ort.parts`` model) in a child process and register it.

The child (``lib_ort.olive_child``) runs in a *toolchain*: an interpreter and an environment given
as parameters. In the WebUI that is a separate environment holding Olive and its dependencies
(they clash with the WebUI's pins); in tests and on the command line it is this interpreter.
Its memory is returned to the system when the child exits, and a failed or killed child leaves no
artefact, only an error saying why (running out of memory included). Before it starts, the memory and
the disk it needs (from the export's size, ``lib_ort.memory``) are checked.
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
from .errors import NotEnoughMemory, OptimizationError
from .export import MODEL_FILE, WEIGHTS_FILE
from .memory import Need, check_disk, check_memory, folder_weights_mb, mem_available_mb, oom_killed, process_memory_mb
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
                    progress=None, needed_mb: float | None = None) -> None:
    """Run ``lib_ort.olive_child`` on ``job`` in ``work`` (its log: ``work/olive.log``); raise
    ``OptimizationError`` saying why if it fails, is killed or runs past ``timeout``, and
    ``NotEnoughMemory`` (with the child's peak, what was available and ``needed_mb``) when the kernel's
    OOM killer ended it."""
    report = progress or (lambda fraction, message: None)
    log_path = work / "olive.log"
    (work / "job.json").write_text(json.dumps(job, indent=2))
    cmd = [toolchain.python, "-m", "lib_ort.olive_child", str(work / "job.json")]
    start = time.perf_counter()
    available_at_start = mem_available_mb()
    peak_mb, least_available = 0.0, available_at_start
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
                seen = process_memory_mb(child.pid)
                if seen is not None:
                    peak_mb = max(peak_mb, seen[1])
                now = mem_available_mb()
                if now is not None and least_available is not None:
                    least_available = min(least_available, now)
                report(min(0.95, 0.1 + elapsed / 600), f"optimizing for {label} with Olive ({elapsed:.0f} s)")
                time.sleep(0.5)
        except BaseException:
            if child.poll() is None:
                child.kill()
                child.wait()
            raise
    if child.returncode != 0:
        if oom_killed(child.returncode):
            raise NotEnoughMemory(_oom_message(label, peak_mb, available_at_start, least_available, needed_mb),
                                  needed_mb=needed_mb, available_mb=available_at_start)
        if child.returncode < 0:
            why = f"was killed by {signal.Signals(-child.returncode).name}"
        else:
            why = f"failed (exit code {child.returncode})"
        raise OptimizationError(f"the {label} optimization {why}. Last lines of its log:\n{_tail(log_path)}")


def _oom_message(label: str, peak_mb: float, available_mb: float | None, least_mb: float | None,
                 needed_mb: float | None) -> str:
    gb = lambda mb: f"{mb / 1024:.1f} GB"  # noqa: E731
    facts = [f"it had reached {gb(peak_mb)}" if peak_mb else None,
             f"{gb(available_mb)} was available when it started" if available_mb is not None else None,
             f"{gb(least_mb)} at the lowest" if least_mb is not None else None,
             f"it needs about {gb(needed_mb)}" if needed_mb else None]
    return (f"the {label} optimization ran out of memory: the system killed it (SIGKILL) "
            f"({', '.join(f for f in facts if f)}). Nothing was registered. Close other programs (or unload "
            "the checkpoint in the WebUI) and try again.")


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
    need = Need(folder_weights_mb(export_folder), ep)
    check_memory(need, f"the {model.kind} for {label}")
    check_disk(registry.root, need.artefact_disk_mb, f"the {label} {model.kind} artefact")
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
        run_olive_child({"ep": ep, "parts": jobs}, work, label, toolchain, timeout=timeout, progress=report,
                        needed_mb=need.optimize_mb)
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
