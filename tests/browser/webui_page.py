"""A WebUI-v1.10.1-shaped page in Gradio 3.41.2, for tests in a real browser.

What matters here is what the WebUI's page gives an extension, not its look:
- the components ORT Turbo's preset sets, with the WebUI's elem_ids (``txt2img_steps`` slider,
  ``txt2img_cfg_scale`` slider, ``txt2img_sampling`` and ``txt2img_scheduler`` dropdowns, same with
  ``img2img_``), created before the scripts' UI, as in the default page order;
- every component handed to ``Script.after_component`` and ``script_callbacks.after_component_callback``
  as it is created (what the WebUI's gradio patches do), TabItems included;
- ORT Turbo's accordion from its Script's ``ui()``, its tab from ``on_ui_tabs`` rendered inside
  ``gr.TabItem(elem_id="tab_<id>")``, its settings section built from the option templates;
- extension JavaScript (javascript/*.js) injected into the page head, with minimal ``gradioApp()``
  and ``updateInput()`` (the WebUI's script.js provides them);
- Generate runs a real job (the stand-in's process_images with ORT Turbo's script and a tiny ldm
  UNet) and records what it received; the paste button parses the prompt box's infotext and fills
  the paste fields and "Override settings" as the WebUI's paste does.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import gradio as gr

from modules import script_callbacks, shared
from modules.infotext_utils import create_override_settings_dict, get_override_settings, parse_generation_parameters
from modules.processing import StableDiffusionProcessing, run_job
from modules.scripts import ScriptRunner

REPO = Path(__file__).resolve().parents[2]
SAMPLERS = ["DPM++ 2M", "Euler a", "Euler", "DDIM"]
SCHEDULERS = ["Automatic", "Uniform", "Karras", "SGM Uniform", "Align Your Steps", "Simple", "DDIM"]

# what the WebUI's script.js and hints.js give extension JavaScript (only what ours may use)
HARNESS_JS = """
var titles = {};
function gradioApp() {
    const app = document.getElementsByTagName('gradio-app');
    const root = app.length ? (app[0].shadowRoot || app[0]) : document;
    if (!root.getElementById) root.getElementById = (id) => document.getElementById(id);
    return root;
}
function updateInput(target) {
    const e = new Event("input", {bubbles: true});
    Object.defineProperty(e, "target", {value: target});
    target.dispatchEvent(e);
}
"""


def extension_head() -> str:
    """javascript/*.js as <script> elements, as the WebUI puts them into the page head."""
    scripts = [HARNESS_JS, *(p.read_text() for p in sorted((REPO / "javascript").glob("*.js")))]
    return "".join(f"<script>{js}</script>" for js in scripts)


@contextlib.contextmanager
def components_reported(current_scripts: list):
    """Hand every component created to the current tab's scripts and the global callbacks, as the WebUI does."""
    patched = [gr.components.IOComponent, gr.blocks.BlockContext]
    originals = [cls.__init__ for cls in patched]

    def reporting(original):
        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            script_callbacks.after_component_callback(self, **kwargs)
            for script in current_scripts:
                script.after_component(self, **kwargs)
        return init

    for cls, original in zip(patched, originals):
        cls.__init__ = reporting(original)
    try:
        yield
    finally:
        for cls, original in zip(patched, originals):
            cls.__init__ = original


class Received:
    """What the server got from Generate, one dict per click."""

    def __init__(self):
        self.jobs: list[dict] = []
        self.pasted: list[dict] = []  # what the paste button parsed


def _generation_tab(tabname: str, script, received: Received, current: list):
    """Prompt, paste, the sampler section, CFG, Override settings, the scripts, Generate: one WebUI tab."""
    current[:] = [script]
    script.is_img2img = tabname == "img2img"
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{tabname}_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=3, elem_id=f"{tabname}_neg_prompt")
            with gr.Column(scale=0, min_width=120):
                paste = gr.Button("Paste", elem_id=f"{tabname}_paste")
                generate = gr.Button("Generate", variant="primary", elem_id=f"{tabname}_generate")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    sampler = gr.Dropdown(label="Sampling method", choices=SAMPLERS, value=SAMPLERS[0],
                                          elem_id=f"{tabname}_sampling")
                    scheduler = gr.Dropdown(label="Schedule type", choices=SCHEDULERS, value=SCHEDULERS[0],
                                            elem_id=f"{tabname}_scheduler")
                steps = gr.Slider(minimum=1, maximum=150, step=1, value=20, label="Sampling steps",
                                  elem_id=f"{tabname}_steps")
                cfg = gr.Slider(minimum=1.0, maximum=30.0, step=0.5, value=7.0, label="CFG Scale",
                                elem_id=f"{tabname}_cfg_scale")
                override = gr.Dropdown(label="Override settings", multiselect=True, choices=[], value=[],
                                       visible=False, elem_id=f"{tabname}_override_settings")
                script_inputs = script.ui(script.is_img2img)
            with gr.Column(scale=1):
                info = gr.Textbox(label="Generation info", lines=4, interactive=False,
                                  elem_id=f"generation_info_{tabname}")
                comments = gr.Textbox(label="Comments", lines=2, interactive=False, elem_id=f"comments_{tabname}")

        def run(prompt_text, negative_text, steps_value, sampler_name, scheduler_name, cfg_scale, pairs, *args):
            return generate_job(received, script, tabname, prompt_text, negative_text, steps_value, sampler_name,
                                scheduler_name, cfg_scale, pairs, args)

        generate.click(run, inputs=[prompt, negative, steps, sampler, scheduler, cfg, override, *script_inputs],
                       outputs=[info, comments])

        fields = [(prompt, "Prompt"), (negative, "Negative prompt"), (steps, "Steps"), (sampler, "Sampler"),
                  (scheduler, "Schedule type"), (cfg, "CFG scale"), *script.infotext_fields]

        def pasted(text):
            params = parse_generation_parameters(text)
            received.pasted.append(params)
            updates = []
            for component, key in fields:
                value = key(params) if callable(key) else params.get(key)
                if value is None:
                    updates.append(gr.update())
                elif isinstance(component, gr.Slider):
                    updates.append(gr.update(value=float(value)))
                else:
                    updates.append(gr.update(value=value))
            handled = {key for _, key in fields if not callable(key)} | set(script.paste_field_names or [])
            pairs = [f"{name}: {value}" for name, _, value in get_override_settings(params, skip_fields=handled)]
            updates.append(gr.update(value=pairs, choices=pairs, visible=bool(pairs)))
            return updates

        paste.click(pasted, inputs=[prompt], outputs=[c for c, _ in fields] + [override])
    return tab


def generate_job(received, script, tabname, prompt, negative, steps, sampler_name, scheduler, cfg_scale, pairs, args):
    """The WebUI's txt2img()/img2img(): a processing object from the page's values, the job, its infotext."""
    import torch

    init_images = [torch.zeros(3, 64, 64)] if tabname == "img2img" else None
    model = shared.sd_model
    model.rows_per_call.clear()
    p = StableDiffusionProcessing(ScriptRunner([(script, tuple(args))]), steps=int(steps), cfg_scale=float(cfg_scale),
                                  prompt=prompt, negative_prompt=negative, sampler_name=sampler_name,
                                  scheduler=scheduler, override_settings=create_override_settings_dict(pairs or []),
                                  init_images=init_images)
    processed = run_job(p)
    received.jobs.append({
        "tab": tabname, "steps": p.steps, "cfg_scale": p.cfg_scale, "sampler_name": p.sampler_name,
        "scheduler": p.scheduler, "negative_prompt": negative, "override_settings": dict(p.override_settings),
        "script_args": list(args), "rows_per_call": list(model.rows_per_call), "opts_after": dict(shared.opts.data),
        "infotext": processed.infotexts[0],
    })
    return processed.infotexts[0], "\n".join(p.comments)


def _settings_section(section_id: str):
    """The WebUI's Settings page for one section: each option's component, label and elem_id ``setting_<key>``."""
    with gr.Blocks(analytics_enabled=False) as page:
        for key, info in shared.opts.data_labels.items():
            if not info.section or info.section[0] != section_id:
                continue
            kind = info.component or {str: gr.Textbox, bool: gr.Checkbox, int: gr.Number, float: gr.Number}[
                type(info.default)]
            args = info.component_args() if callable(info.component_args) else (info.component_args or {})
            kind(label=info.label, value=getattr(shared.opts, key), elem_id=f"setting_{key}", **args)
            if info.comment_after:
                gr.HTML(info.comment_after)
    return page


def build_page(received: Received, scripts: dict, settings_section: str) -> gr.Blocks:
    """The page: txt2img, img2img, the extensions' tabs (``on_ui_tabs``), Settings (one section)."""
    current: list = []
    with components_reported(current):
        interfaces = [(_generation_tab(name, scripts[name], received, current), name, name)
                      for name in ("txt2img", "img2img")]
        current[:] = []
        interfaces += script_callbacks.ui_tabs_callback()
        interfaces.append((_settings_section(settings_section), "Settings", "settings"))
        with gr.Blocks(analytics_enabled=False, title="Stable Diffusion") as demo:
            with gr.Tabs(elem_id="tabs"):
                for interface, label, ifid in interfaces:
                    with gr.TabItem(label, id=ifid, elem_id=f"tab_{ifid}"):
                        interface.render()
    return demo
