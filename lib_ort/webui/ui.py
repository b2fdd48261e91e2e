"""The "ORT Turbo" tab (export, artefact list, delete) and the per-generation accordion.

Gradio 3.41 (the WebUI's version). Handlers raise ``gr.Error`` with the reason: a failure is shown
to the user, never built and dropped.
"""

from __future__ import annotations

import gradio as gr

from ..errors import OrtTurboError
from . import service, settings

COLUMNS = ["id", "checkpoint", "provider", "precision", "family", "size_mb", "created", "valid", "problem"]
TURBO_STEPS = (1, 2, 3, 4)


def _table():
    rows = service.artefact_rows()
    return [[r[c] for c in COLUMNS] for r in rows], [r["id"] for r in rows]


def _status_markdown() -> str:
    status = settings.provider_status()
    lines = [f"- **{label}**: {'available' if why is None else why}" for label, why in status.items()]
    return "Execution providers in this install:\n" + "\n".join(lines)


def export_clicked(provider_label: str, progress=gr.Progress()):
    ep = settings.resolve_provider(provider_label)
    try:
        manifest = service.export_loaded_checkpoint(ep, progress=lambda f, m: progress(f, desc=m))
    except (OrtTurboError, ValueError) as exc:
        raise gr.Error(str(exc)) from exc
    rows, ids = _table()
    message = (f"Exported **{manifest['checkpoint']['name']}** for **{manifest['ep']}** "
               f"({manifest['precision']}) as `{manifest['id']}`. Select **{'ORT Turbo'}** as the SD Unet.")
    return message, rows, gr.update(choices=ids)


def export_vae_clicked(provider_label: str, progress=gr.Progress()):
    from . import vae as ort_vae

    ep = settings.resolve_provider(provider_label)
    try:
        manifest = ort_vae.export_loaded_vae(ep, progress=lambda f, m: progress(f, desc=m))
    except (OrtTurboError, ValueError) as exc:
        raise gr.Error(str(exc)) from exc
    finally:
        service.artefacts_changed()
    rows, ids = _table()
    return (f"Exported the VAE for **{manifest['ep']}** ({manifest['precision']}) as `{manifest['id']}`; it runs "
            "while ORT Turbo is the SD Unet and *VAE on ONNX Runtime* is on."), rows, gr.update(choices=ids)


def refresh_clicked():
    rows, ids = _table()
    return rows, gr.update(choices=ids)


def delete_clicked(artefact_id: str):
    if not artefact_id:
        raise gr.Error("choose an export to delete")
    try:
        service.delete_artefact(artefact_id)
    except OrtTurboError as exc:
        raise gr.Error(str(exc)) from exc
    rows, ids = _table()
    return f"Deleted `{artefact_id}`.", rows, gr.update(choices=ids, value=None)


def _usage_markdown() -> str:
    from ..install_layout import usage

    sizes = usage(artefacts_root=service.registry().root)
    mb = {k: v / 2**20 for k, v in sizes.items()}
    return (f"Olive toolchain: {mb['toolchain']:.0f} MB · runtime libraries: {mb['runtime_libs']:.0f} MB · "
            f"exports: {mb['artefacts']:.0f} MB")


def delete_toolchain_clicked():
    from ..install_layout import delete_toolchain

    try:
        freed = delete_toolchain()
    except OrtTurboError as exc:
        raise gr.Error(str(exc)) from exc
    return f"Deleted the Olive toolchain ({freed / 2**20:.0f} MB); the next export builds it again.", _usage_markdown()


def delete_all_clicked():
    from ..install_layout import delete_artefacts

    freed = delete_artefacts(service.registry().root)
    service.artefacts_changed()
    rows, ids = _table()
    return (f"Deleted every export ({freed / 2**20:.0f} MB).", _usage_markdown(), rows,
            gr.update(choices=ids, value=None))


def build_tab():
    rows, ids = _table()
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("Export the loaded checkpoint's UNet once per execution provider, then pick "
                    "**ORT Turbo** as the SD Unet (Settings > Stable Diffusion, or the quick settings).")
        with gr.Row():
            provider = gr.Dropdown(settings.PROVIDER_CHOICES, value="Automatic", label="Execution provider",
                                   elem_id="ort_turbo_export_provider")
            export = gr.Button("Export loaded checkpoint", variant="primary", elem_id="ort_turbo_export")
            export_vae = gr.Button("Export VAE", elem_id="ort_turbo_export_vae")
        message = gr.Markdown(_status_markdown(), elem_id="ort_turbo_message")
        table = gr.Dataframe(value=rows, headers=COLUMNS, interactive=False, elem_id="ort_turbo_artefacts")
        with gr.Row():
            choice = gr.Dropdown(ids, label="Export", elem_id="ort_turbo_delete_choice")
            delete = gr.Button("Delete", elem_id="ort_turbo_delete")
            refresh = gr.Button("Refresh", elem_id="ort_turbo_refresh")
        with gr.Accordion("Clean up", open=False):
            usage_text = gr.Markdown(_usage_markdown(), elem_id="ort_turbo_usage")
            with gr.Row():
                drop_toolchain = gr.Button("Delete Olive toolchain", elem_id="ort_turbo_delete_toolchain")
                drop_all = gr.Button("Delete all exports", variant="stop", elem_id="ort_turbo_delete_all")
        export.click(export_clicked, inputs=[provider], outputs=[message, table, choice])
        export_vae.click(export_vae_clicked, inputs=[provider], outputs=[message, table, choice])
        drop_toolchain.click(delete_toolchain_clicked, outputs=[message, usage_text])
        drop_all.click(delete_all_clicked, outputs=[message, usage_text, table, choice])
        delete.click(delete_clicked, inputs=[choice], outputs=[message, table, choice])
        refresh.click(refresh_clicked, outputs=[table, choice])
    return tab


def build_accordion(is_img2img: bool):
    """Returns the components whose values become the script's arguments: (cfg_free,)."""
    prefix = "img2img" if is_img2img else "txt2img"
    with gr.Accordion("ORT Turbo", open=False, elem_id=f"ort_turbo_{prefix}"):
        with gr.Row():
            cfg_free = gr.Checkbox(True, label="CFG-free at CFG scale <= 1", elem_id=f"ort_turbo_{prefix}_cfg_free")
            steps = gr.Radio([str(s) for s in TURBO_STEPS], value="1", label="Turbo steps",
                             elem_id=f"ort_turbo_{prefix}_steps")
            gr.Button("Apply Turbo preset", elem_id=f"ort_turbo_{prefix}_preset").click(
                None, inputs=[steps], outputs=[], _js=f"(steps) => ortTurboApplyPreset('{prefix}', steps)")
        gr.Markdown("Turbo preset: Euler a, SGM Uniform, CFG scale 1, the chosen steps. For img2img and hires fix "
                    "it also turns on *Settings > img2img > do exactly the amount of steps* so 1 step works.")
    return [cfg_free]
