"""ORT Turbo's WebUI entry point: registers its SD Unet, settings, tab, accordion and API routes.

Thin on purpose: the logic lives in lib_ort.webui (WebUI-facing) and lib_ort (engine).
"""

import gradio as gr

from modules import script_callbacks, scripts, shared

from lib_ort.webui import job, lifecycle, settings, ui, unet
from lib_ort.webui import vae as ort_vae
from lib_ort.webui.api import add_routes

shared.options_templates.update(settings.option_templates(shared, gr))
script_callbacks.on_list_unets(unet.list_unets)
script_callbacks.on_model_loaded(unet.model_loaded_mid_job)
script_callbacks.on_ui_tabs(lambda: [(ui.build_tab(), "ORT Turbo", "ort_turbo")])
script_callbacks.on_app_started(lambda demo, app: add_routes(app, shared.cmd_opts))
script_callbacks.on_after_component(ui.refresh_when_shown)
script_callbacks.on_script_unloaded(lifecycle.unload)


class OrtTurboScript(scripts.Script):
    def title(self):
        return "ORT Turbo"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def preset(self):
        if getattr(self, "_preset", None) is None:
            self._preset = ui.TurboPreset("img2img" if self.is_img2img else "txt2img")
        return self._preset

    def after_component(self, component, **kwargs):
        self.preset().saw(component)

    def ui(self, is_img2img):
        components = ui.build_accordion(is_img2img, self.preset())
        self.infotext_fields = [(components[0], job.pasted_cfg_free)]
        self.paste_field_names = [job.INFOTEXT_CFG_FREE]
        return components

    def before_process(self, p, cfg_free=True, *args):
        job.start_job(p, bool(cfg_free))

    def process(self, p, *args):
        selected = unet.is_selected()  # resolved once: it looks the checkpoint's artefact up
        job.set_vae_dtype(p, selected)
        ort_vae.before_job(p, selected)

    def process_batch(self, p, *args, **kwargs):
        from modules import sd_unet

        job.before_batch(p, unet.is_ours_active(), sd_unet.current_unet)

    def postprocess_batch(self, p, *args, **kwargs):
        job.after_batch(p, unet.is_ours_active())
        ort_vae.after_batch(p)

    def postprocess(self, p, processed, *args):
        job.finish_job()
        ort_vae.finish_job()
