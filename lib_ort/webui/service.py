"""What the tab, the API routes and the UNet share: the registry, the provider, export, list, delete.

Exporting takes the WebUI's queue lock only while it touches the loaded model (the trace, about a
minute for SD-Turbo); the optimization child runs after the lock is released, so generation and the
rest of the UI go on during the minutes Olive takes. One export runs at a time (tab, API, UNet or
VAE): a second one is refused at once instead of fighting the first for the CPU and the disk. Before
any of those minutes are spent, the WebUI's own ONNX Runtime must be able to run what is made.
"""

from __future__ import annotations

import contextlib
import errno
import sys
import threading
import time
from pathlib import Path

from modules import shared

from ..errors import DiskFull, ExportBusy, NoCheckpointLoaded, OrtTurboError, RuntimeUnavailable
from ..install_layout import Layout, default_artefacts_root
from ..optimize import Toolchain
from ..pipeline import prepare
from ..registry import Registry
from . import settings

LOG_PREFIX = "[ORT Turbo]"
_generation = [0]  # bumped whenever artefacts change, so an active UNet looks its artefact up again
_export_lock = threading.Lock()
_export_running = [""]  # what the running export makes, for the refusal of a second one


def log(message: str) -> None:
    print(f"{LOG_PREFIX} {message}", file=sys.stderr, flush=True)


def registry_generation() -> int:
    return _generation[0]


def artefacts_changed() -> None:
    _generation[0] += 1


def registry() -> Registry:
    custom = (getattr(shared.opts, settings.ARTEFACT_DIR, "") or "").strip()
    return Registry(Path(custom) if custom else default_artefacts_root())


def provider() -> str:
    return settings.resolve_provider(getattr(shared.opts, settings.PROVIDER, "Automatic"))


def toolchain(progress=None) -> Toolchain:
    """The Olive environment the optimization child runs in: built on the first export, then reused."""
    from ..toolchain import ensure_toolchain

    return ensure_toolchain(Layout.default(), host_python=sys.executable, progress=progress)


def checkpoint_record(info) -> dict:
    """The manifest's checkpoint entry for a WebUI CheckpointInfo (hash first: names move and collide)."""
    sha256 = getattr(info, "sha256", None)
    if not sha256 and hasattr(info, "calculate_shorthash"):
        info.calculate_shorthash()
        sha256 = info.sha256
    if not sha256:
        raise OrtTurboError(f"the WebUI has no sha256 for {info.title}; cannot key an export to it")
    return {"hash": sha256, "name": info.title, "model_name": info.model_name,
            "name_for_extra": getattr(info, "name_for_extra", None)}


def find_artefact(info, ep: str):
    """The valid artefact for this checkpoint and provider; None if none; ArtefactError if broken."""
    reg = registry()
    record = checkpoint_record(info)
    folder = reg.find(record["hash"], ep)
    return None if folder is None else reg.load(folder, record["hash"])


def artefact_rows() -> list[dict]:
    rows = []
    for row in registry().list():
        m = row.manifest or {}
        rows.append({
            "id": row.id,
            "checkpoint": (m.get("checkpoint") or {}).get("name", "?"),
            "checkpoint_hash": (m.get("checkpoint") or {}).get("hash"),
            "provider": m.get("ep", "?"),
            "precision": m.get("precision", "?"),
            "family": m.get("family") or m.get("kind", "?"),
            "size_mb": round(sum((m.get("files") or {}).values()) / 2**20, 1),
            "created": m.get("created", "?"),
            "valid": row.valid,
            "problem": row.problem or "",
        })
    return rows


def delete_artefact(artefact_id: str) -> None:
    registry().delete(artefact_id)
    artefacts_changed()


def check_runtime(ep: str) -> None:
    """Raise ``RuntimeUnavailable`` unless this WebUI's Python can run an artefact made for ``ep``.

    The optimization child runs in the toolchain's own environment, so an export can succeed where the
    WebUI itself has no (or no fitting) ONNX Runtime: this is checked first, in the WebUI's process.
    """
    from ..providers import provider
    from ..registry import version_at_least
    from ..sessions import import_onnxruntime, require_provider

    require_provider(ep)
    have = import_onnxruntime().__version__
    if not version_at_least(have, provider(ep).min_ort):
        raise RuntimeUnavailable(f"a {provider(ep).label} artefact needs ONNX Runtime {provider(ep).min_ort} or newer in the WebUI; "
                                 f"it has {have}. Update onnxruntime, then export.")
    if ep in ("cuda", "tensorrt"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeUnavailable(f"a {ep} export runs on a GPU through torch, and this WebUI's torch sees none; "
                                     "choose CPU (or DirectML on Windows)")


def loaded_model():
    """The WebUI's loaded checkpoint, or ``NoCheckpointLoaded``."""
    if shared.sd_model is None:
        raise NoCheckpointLoaded()
    return shared.sd_model


@contextlib.contextmanager
def one_export(what: str):
    """Hold the export slot for ``what``; ``ExportBusy`` at once if another export holds it.

    A full disk anywhere inside becomes ``DiskFull`` with the folder to clean; the partial files were
    removed on the way out by the code that wrote them.
    """
    if not _export_lock.acquire(blocking=False):
        raise ExportBusy(_export_running[0] or "another export")
    _export_running[0] = what
    try:
        try:
            registry().sweep()  # what an export killed more than a day ago left behind
        except OSError as exc:  # tidying up must never stop the export itself
            log(f"could not remove old temporary folders ({exc})")
        yield
    except Exception as exc:
        if _out_of_space(exc):
            raise DiskFull(f"the disk is full: exporting {what} stopped and nothing was registered ({exc}). "
                           f"Free space where exports live ({registry().root}) and export again.") from exc
        raise
    finally:
        _export_running[0] = ""
        _export_lock.release()


def _out_of_space(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        if "No space left on device" in str(exc):  # the optimization child's log tail says it in words
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def export_loaded_checkpoint(ep: str, progress=None) -> dict:
    """Export and optimize the loaded checkpoint's UNet for ``ep``; returns the artefact's manifest."""
    report = progress or (lambda fraction, message: None)
    last = [0.0]

    def both(fraction, message):
        report(fraction, message)
        if time.monotonic() - last[0] > 10 or fraction in (0.0, 1.0):
            log(f"{fraction * 100:3.0f} % {message}")
            last[0] = time.monotonic()

    if ep not in settings.PROVIDERS.values():
        raise OrtTurboError(f"unknown provider {ep!r}; choose one of {', '.join(settings.PROVIDERS.values())}")
    sd_model = loaded_model()
    check_runtime(ep)
    record = checkpoint_record(sd_model.sd_checkpoint_info)
    with one_export(f"{record['name']} for {ep}"):
        return _export_checkpoint(sd_model, record, ep, both)


def _export_checkpoint(sd_model, record: dict, ep: str, both) -> dict:
    from modules import call_queue, sd_unet

    reg = registry()
    both(0.0, f"exporting {record['name']} for {ep}")
    with call_queue.queue_lock:  # no generation may run while the UNet is traced on the CPU in fp32
        was_active = sd_unet.current_unet is not None
        sd_unet.apply_unet("None")  # route UNet calls to PyTorch during the trace
        try:
            from ..pipeline import ensure_export

            ensure_export(sd_model.model.diffusion_model, reg, record, progress=lambda f, m: both(0.4 * f, m))
        finally:
            if was_active:
                sd_unet.apply_unet()
    tools = toolchain(progress=lambda f, m: both(0.4, m))
    try:
        prepared = prepare(None, reg, record, ep, toolchain=tools, force=True, keep_export=False,
                           progress=lambda f, m: both(f, m))
    finally:
        artefacts_changed()
    sd_unet.list_unets()
    both(1.0, f"ready: {prepared.artefact.id}")
    return prepared.artefact.manifest
