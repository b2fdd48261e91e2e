"""The extension leaving the running WebUI: "Apply and restart UI", the extension disabled or reloaded.

The WebUI calls ``on_script_unloaded`` callbacks before it reloads the scripts. Everything ORT Turbo
changed in the running WebUI is put back there: the job's options and VAE dtype, the VAE's
decode/encode, ``p.close`` wrappers, the SD Unet (the PyTorch UNet back on its device), the sessions
and the Settings entries (a disabled extension leaves no dead options; the values in config.json
stay). Each step runs even if another fails: unloading must not stop the WebUI's reload.
"""

from __future__ import annotations

from modules import sd_unet, shared

from . import job, service, settings, unet
from . import vae as ort_vae


def _release_unet() -> None:
    if unet.is_ours_active():
        sd_unet.apply_unet("None")  # deactivates ours and moves the PyTorch UNet back, as the WebUI does


def _remove_settings() -> None:
    """Every option of ORT Turbo's Settings section (found by its section, so a new option is not forgotten)."""
    tables = {id(t): t for t in (shared.options_templates, getattr(shared.opts, "data_labels", None)) if t is not None}
    for table in tables.values():
        for key in [k for k, info in table.items() if _section_id(info) == settings.SECTION[0]]:
            del table[key]


def _section_id(info) -> str | None:
    section = getattr(info, "section", None)
    return section[0] if section else None


def unload() -> None:
    for step in (ort_vae.unload, job.unload, _release_unet, _remove_settings):
        try:
            step()
        except Exception as exc:
            service.log(f"unloading: {step.__name__.strip('_').replace('_', ' ')} failed ({type(exc).__name__}: {exc})")
