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
from .. import providers
from . import settings

LOG_PREFIX = "[ORT Turbo]"
_export_lock = threading.Lock()


class WebuiState:
    """What ORT Turbo keeps in the running WebUI between calls, in one place (the instance ``state``)."""

    def __init__(self):
        #: bumped whenever artefacts change, so an active UNet looks its artefact up again
        self.generation = 0
        #: what the running export makes, for the refusal of a second one ("" when none runs)
        self.export_running = ""
        #: the current generation's ``job.Job`` (None before the first)
        self.job = None
        #: the dtype the WebUI's NaN auto-revert moved the VAE to in this session (None: it has not run)
        self.vae_reverted_to = None


state = WebuiState()


def log(message: str) -> None:
    print(f"{LOG_PREFIX} {message}", file=sys.stderr, flush=True)


def registry_generation() -> int:
    return state.generation


def artefacts_changed() -> None:
    state.generation += 1


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
        raise OrtTurboError(f"the WebUI has no sha256 for {info.title}; cannot key an artefact to it")
    return {"hash": sha256, "name": info.title, "model_name": info.model_name,
            "name_for_extra": getattr(info, "name_for_extra", None)}


def find_artefact(info, ep: str):
    """The valid artefact for this checkpoint and provider; None if none; ArtefactError if broken."""
    reg = registry()
    record = checkpoint_record(info)
    folder = reg.find(record["hash"], ep)
    return None if folder is None else reg.load(folder, record["hash"])


def providers_to_try() -> list[str]:
    """The provider the settings choose, then, under Automatic when that is OpenVINO, the CPU provider: a
    checkpoint exported for the CPU before onnxruntime-openvino was installed keeps running on ONNX Runtime
    (fp32, the infotext says "CPU") until it is exported for OpenVINO, instead of falling back to PyTorch."""
    choice = getattr(shared.opts, settings.PROVIDER, "Automatic")
    ep = settings.resolve_provider(choice)
    return [ep, "cpu"] if choice == "Automatic" and ep == "openvino" else [ep]


def find_served_artefact(info, eps: list[str] | tuple | None = None) -> tuple:
    """(artefact, provider) for the first of ``eps`` (default :func:`providers_to_try`) that has a valid
    artefact for this checkpoint; (None, the chosen provider) if none has; ArtefactError if the chosen one's
    is broken."""
    eps = list(eps) if eps is not None else providers_to_try()
    for ep in eps:
        artefact = find_artefact(info, ep)
        if artefact is not None:
            return artefact, ep
    return None, eps[0]


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
    from ..registry import version_at_least
    from ..sessions import import_onnxruntime, require_provider

    require_provider(ep)
    row = providers.provider(ep)
    have = import_onnxruntime().__version__
    if not version_at_least(have, row.min_ort):
        raise RuntimeUnavailable(f"a {row.label} artefact needs ONNX Runtime {row.min_ort} or newer in the WebUI; "
                                 f"it has {have}. Update onnxruntime, then export.")
    if ep in ("cuda", "tensorrt"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeUnavailable(f"a {row.label} artefact runs on a GPU through torch, and this WebUI's torch "
                                     "sees none; choose CPU (or DirectML on Windows)")


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
        raise ExportBusy(state.export_running or "another export")
    state.export_running = what
    try:
        try:
            registry().sweep()  # what an export killed more than a day ago left behind
        except OSError as exc:  # tidying up must never stop the export itself
            log(f"could not remove old temporary folders ({exc})")
        yield
    except Exception as exc:
        if _out_of_space(exc):
            raise DiskFull(f"the disk is full: exporting {what} stopped and nothing was registered ({exc}). "
                           f"Free space where artefacts live ({registry().root}) and export again.") from exc
        raise
    finally:
        state.export_running = ""
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


class PartExport:
    """What exporting one model part from the loaded WebUI model takes: its name for messages, the trace
    (under the queue lock: the part is on the CPU in fp32 meanwhile), the optimization (outside it) and
    the clean-up of what the trace left. One instance per export; ``lib_ort.webui.vae`` has the VAE's."""

    #: how much of the progress bar the trace takes
    trace_share = 0.4

    def __init__(self, sd_model, ep: str):
        self.sd_model, self.ep = sd_model, ep
        self.checkpoint = checkpoint_record(sd_model.sd_checkpoint_info)

    def what(self) -> str:
        raise NotImplementedError

    def trace(self, reg: Registry, progress) -> None:
        raise NotImplementedError

    def optimize(self, reg: Registry, tools: Toolchain, progress):
        """Returns the artefact that is ready (the first one made, when several are)."""
        raise NotImplementedError

    def clean(self) -> None:
        pass

    def ready(self) -> None:
        pass


class UnetExport(PartExport):
    def what(self) -> str:
        return f"{self.checkpoint['name']} for {providers.label(self.ep)}"

    def trace(self, reg, progress):
        from modules import sd_unet

        from ..pipeline import ensure_export
        from .networks import own_weights

        was_active = sd_unet.current_unet is not None
        sd_unet.apply_unet("None")  # route UNet calls to PyTorch during the trace
        unet = self.sd_model.model.diffusion_model
        try:
            with own_weights(unet):  # not the weights a Lora network left in place after the last job
                ensure_export(unet, reg, self.checkpoint, progress=lambda f, m: progress(self.trace_share * f, m))
        finally:
            if was_active:
                sd_unet.apply_unet()

    def optimize(self, reg, tools, progress):
        return prepare(None, reg, self.checkpoint, self.ep, toolchain=tools, force=True, keep_export=False,
                       progress=progress).artefact

    def ready(self):
        from modules import sd_unet

        sd_unet.list_unets()


def export_loaded(make, ep: str, progress=None) -> dict:
    """Export and optimize a part of the loaded model for ``ep``; returns the artefact's manifest.

    ``make(sd_model, ep)`` gives the part's ``PartExport``. One export at a time; the runtime is checked
    before any minute is spent; the console hears about it every ten seconds.
    """
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
    part = make(sd_model, ep)
    with one_export(part.what()):
        return _export(part, both)


def _export(part: PartExport, both) -> dict:
    from modules import call_queue

    reg = registry()
    both(0.0, f"exporting {part.what()}")
    try:
        with call_queue.queue_lock:  # no generation may run while the part is traced on the CPU in fp32
            part.trace(reg, both)
        tools = toolchain(progress=lambda f, m: both(part.trace_share, m))
        artefact = part.optimize(reg, tools, both)
    finally:
        part.clean()
        artefacts_changed()
    part.ready()
    both(1.0, f"ready: {artefact.id}")
    return artefact.manifest


def export_loaded_checkpoint(ep: str, progress=None) -> dict:
    """Export and optimize the loaded checkpoint's UNet for ``ep``; returns the artefact's manifest."""
    return export_loaded(UnetExport, ep, progress)
