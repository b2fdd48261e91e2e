"""The "ORT Turbo" tab (export, artefact list, delete) and the per-generation accordion.

Gradio 3.41 (the WebUI's version). Handlers raise ``gr.Error`` with the reason: a failure is shown
to the user, never built and dropped.

The Turbo preset sets the page's own steps, CFG, sampler and scheduler components from the server
(``gr.update`` from the button's click), found by the elem_ids the WebUI gives them: a value written
into a Gradio 3.41 dropdown from JavaScript shows in the box but is not what Generate sends.
"""

from __future__ import annotations

import gradio as gr

from .. import providers
from ..errors import OrtTurboError
from . import service, settings

#: (header, artefact row key): what a user needs first, the long id last
COLUMNS = [("checkpoint", "checkpoint"), ("provider", "provider"), ("precision", "precision"),
           ("kind", "family"), ("MB", "size_mb"), ("valid", "valid"), ("why not", "problem"), ("id", "id")]
TURBO_STEPS = (1, 2, 3, 4)
#: the Turbo preset; never Align Your Steps or DDIM (broken at 1 step)
PRESET_SAMPLER = "Euler a"
PRESET_SCHEDULER = "SGM Uniform"
PRESET_CFG = 1.0
#: the WebUI's components the preset sets, by the suffix of their elem_id (``txt2img_steps``, ...)
PRESET_TARGETS = ("steps", "cfg_scale", "sampling", "scheduler")
TAB_ELEM_ID = "ort_turbo"  # the WebUI wraps the tab in a TabItem with elem_id "tab_" + this


def _checkpoint_titles() -> dict[str, str]:
    """sha256 -> the WebUI's checkpoint title ("name.safetensors [hash10]") for every checkpoint it has hashed
    (the loaded one always). Never ``shared.sd_model``: in the WebUI reading it loads a checkpoint."""
    try:
        from modules import sd_models
    except ImportError:
        return {}
    return {info.sha256: info.title for info in list(getattr(sd_models, "checkpoints_list", {}).values())
            if getattr(info, "sha256", None)}


def _table():
    rows = service.artefact_rows()
    titles = _checkpoint_titles()
    for row in rows:
        row["checkpoint"] = titles.get(row.get("checkpoint_hash"), row["checkpoint"])
        row["provider"] = providers.label(row["provider"])
        row["valid"] = "yes" if row["valid"] else "no"
    return [[r[key] for _, key in COLUMNS] for r in rows], [r["id"] for r in rows]


def _status_markdown() -> str:
    status = settings.provider_status()
    lines = [f"- **{label}**: {'available' if why is None else why}" for label, why in status.items()]
    return "Execution providers in this install:\n" + "\n".join(lines)


def _exported(export, provider_label: str, progress, message) -> tuple:
    """Run ``export(ep, progress=...)`` for the chosen provider; the message, the table and the choices."""
    ep = settings.resolve_provider(provider_label)
    try:
        manifest = export(ep, progress=lambda f, m: progress(f, desc=m))
    except (OrtTurboError, ValueError) as exc:
        raise gr.Error(str(exc)) from exc
    rows, ids = _table()
    return message(manifest), rows, gr.update(choices=ids)


def export_clicked(provider_label: str, progress=gr.Progress()):
    return _exported(service.export_loaded_checkpoint, provider_label, progress, lambda m: (
        f"Exported **{m['checkpoint']['name']}** for **{providers.label(m['ep'])}** ({m['precision']}) as `{m['id']}`. "
        f"Select **ORT Turbo** as the SD Unet."))


def export_vae_clicked(provider_label: str, progress=gr.Progress()):
    from . import vae as ort_vae

    return _exported(ort_vae.export_loaded_vae, provider_label, progress, lambda m: (
        f"Exported the VAE for **{providers.label(m['ep'])}** ({m['precision']}) as `{m['id']}`; it runs while "
        "ORT Turbo is the SD Unet and *VAE on ONNX Runtime* is on."))


def refresh_clicked():
    """The table and the delete dropdown as the registry is now (artefacts made anywhere: API, other pages)."""
    rows, ids = _table()
    return rows, gr.update(choices=ids)


_tab_outputs: list = []  # the table and dropdown of the tab built last (a "Reload UI" builds it again)
_tab_item: list = []  # the WebUI's TabItem around our tab, until its select event is wired


def refresh_when_shown(component, **kwargs) -> None:
    """``on_after_component``: selecting the WebUI's TabItem around our tab refreshes the table.

    The WebUI reports a TabItem from inside its constructor, before Gradio gives it a ``select``
    event; the event is wired when the next component is reported (the next tab, or the footer that
    always follows the tabs), by which time the TabItem is complete.
    """
    if _tab_item and hasattr(_tab_item[0], "select"):
        _tab_item.pop().select(refresh_clicked, outputs=list(_tab_outputs), show_progress=False)
    if kwargs.get("elem_id") == f"tab_{TAB_ELEM_ID}" and _tab_outputs:
        _tab_item[:] = [component]


def delete_clicked(artefact_id: str):
    if not artefact_id:
        raise gr.Error("choose an artefact to delete")
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
            f"artefacts: {mb['artefacts']:.0f} MB")


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
    return (f"Deleted every artefact ({freed / 2**20:.0f} MB).", _usage_markdown(), rows,
            gr.update(choices=ids, value=None))


def build_tab():
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("Export the loaded checkpoint's UNet once per execution provider, then pick "
                    "**ORT Turbo** as the SD Unet (Settings > Stable Diffusion, or the quick settings).")
        with gr.Row():
            provider = gr.Dropdown(settings.PROVIDER_CHOICES, value="Automatic", label="Execution provider",
                                   elem_id="ort_turbo_export_provider")
            export = gr.Button("Export loaded checkpoint", variant="primary", elem_id="ort_turbo_export")
            export_vae = gr.Button("Export VAE", elem_id="ort_turbo_export_vae")
        message = gr.Markdown(_status_markdown(), elem_id="ort_turbo_message")
        table = gr.Dataframe(headers=[header for header, _ in COLUMNS], datatype="str", interactive=False,
                             wrap=True, elem_id="ort_turbo_artefacts")
        with gr.Row():
            choice = gr.Dropdown([], label="Artefact", elem_id="ort_turbo_delete_choice")
            delete = gr.Button("Delete", elem_id="ort_turbo_delete")
            refresh = gr.Button("Refresh", elem_id="ort_turbo_refresh")
        with gr.Accordion("Clean up", open=False):
            usage_text = gr.Markdown(_usage_markdown(), elem_id="ort_turbo_usage")
            with gr.Row():
                drop_toolchain = gr.Button("Delete Olive toolchain", elem_id="ort_turbo_delete_toolchain")
                drop_all = gr.Button("Delete all artefacts", variant="stop", elem_id="ort_turbo_delete_all")
        export.click(export_clicked, inputs=[provider], outputs=[message, table, choice])
        export_vae.click(export_vae_clicked, inputs=[provider], outputs=[message, table, choice])
        drop_toolchain.click(delete_toolchain_clicked, outputs=[message, usage_text])
        drop_all.click(delete_all_clicked, outputs=[message, usage_text, table, choice])
        delete.click(delete_clicked, inputs=[choice], outputs=[message, table, choice])
        refresh.click(refresh_clicked, outputs=[table, choice])
        tab.load(refresh_clicked, outputs=[table, choice])  # every page load reads the registry
    _tab_outputs[:] = [table, choice]
    return tab


def preset_values(steps) -> tuple:
    """What the Turbo preset sets, in ``PRESET_TARGETS`` order, for the chosen number of steps (1-4)."""
    try:
        n = int(steps)
    except (TypeError, ValueError):
        n = TURBO_STEPS[0]
    n = min(max(n, TURBO_STEPS[0]), TURBO_STEPS[-1])
    return (gr.update(value=n), gr.update(value=PRESET_CFG), gr.update(value=PRESET_SAMPLER),
            gr.update(value=PRESET_SCHEDULER))


class TurboPreset:
    """The "Apply Turbo preset" button of one tab (txt2img or img2img), wired to the page's own controls.

    The WebUI hands every component it creates to ``Script.after_component``; the button is wired
    as soon as it and all four targets exist, whichever comes last (the user can reorder the page).
    """

    def __init__(self, tabname: str):
        self.tabname = tabname
        self.targets: dict = {}
        self.button = None
        self.steps = None
        self.wired = False

    def saw(self, component) -> None:
        elem_id = getattr(component, "elem_id", None) or ""
        for key in PRESET_TARGETS:
            if elem_id == f"{self.tabname}_{key}":
                self.targets[key] = component
        self._wire()

    def add_button(self, button, steps) -> None:
        self.button, self.steps = button, steps
        self._wire()

    def _wire(self) -> None:
        if self.wired or self.button is None or any(key not in self.targets for key in PRESET_TARGETS):
            return
        self.button.click(preset_values, inputs=[self.steps], outputs=[self.targets[k] for k in PRESET_TARGETS],
                          show_progress=False)
        self.wired = True


def build_accordion(is_img2img: bool, preset: TurboPreset):
    """Returns the components whose values become the script's arguments: (cfg_free,)."""
    prefix = "img2img" if is_img2img else "txt2img"
    with gr.Accordion("ORT Turbo", open=False, elem_id=f"ort_turbo_{prefix}"):
        with gr.Row():
            steps = gr.Radio([str(s) for s in TURBO_STEPS], value="1", label="Turbo steps", scale=2, min_width=220,
                             elem_id=f"ort_turbo_{prefix}_steps")
            button = gr.Button("Apply Turbo preset", scale=1, min_width=160, elem_id=f"ort_turbo_{prefix}_preset")
        cfg_free = gr.Checkbox(True, label="CFG-free at CFG scale 1", elem_id=f"ort_turbo_{prefix}_cfg_free")
        gr.Markdown(f"Turbo preset: {PRESET_SAMPLER}, {PRESET_SCHEDULER}, CFG scale {PRESET_CFG:g}, the chosen "
                    "steps. For img2img and hires fix ORT Turbo also does exactly that many steps.")
    preset.add_button(button, steps)
    return [cfg_free]
