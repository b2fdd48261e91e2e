"""Registration, selection ("ORT Turbo" and "Automatic"), equality and coexistence."""

import gradio as gr

from conftest import StubSdModel
from modules import script_callbacks, sd_unet, shared

from lib_ort.webui import settings
from lib_ort.webui.unet import LABEL, OrtTurboOption


def test_extension_registers_its_unet_settings_tab_and_routes(extension):
    assert any(fn.__module__ == "lib_ort.webui.unet" for fn in script_callbacks.callbacks["list_unets"])
    assert script_callbacks.callbacks["ui_tabs"] and script_callbacks.callbacks["app_started"]
    for key in (settings.PROVIDER, settings.FP16_VAE, settings.CUDA_GRAPHS, settings.CFG_FREE, settings.ARTEFACT_DIR):
        info = shared.options_templates[key]
        assert info.section == ("ort_turbo", "ORT Turbo") and info.category_id == "sd"
    assert shared.opts.ort_turbo_cfg_free is True and shared.opts.ort_turbo_cuda_graphs is False
    assert shared.options_templates[settings.PROVIDER].component_args["choices"] == [
        "Automatic", "CUDA", "TensorRT", "DirectML", "CPU"]
    assert "Unavailable here" in shared.options_templates[settings.PROVIDER].comment_after  # CPU-only runtime


def test_provider_resolution():
    status = {"CUDA": "not here", "TensorRT": "not here", "DirectML": "not here", "CPU": None}
    assert settings.resolve_provider("Automatic", status) == "cpu"
    assert settings.resolve_provider("Automatic", dict(status, CUDA=None)) == "cuda"
    assert settings.resolve_provider("Automatic", dict(status, TensorRT=None)) == "cpu"  # TensorRT only when chosen
    assert settings.resolve_provider("TensorRT", status) == "tensorrt"


def test_ort_turbo_label_and_automatic_in_a_sub_folder(fresh_webui, exported, sd2_model):
    assert sd2_model.sd_checkpoint_info.model_name == "turbo_tiny-sd2"  # sub-folder joined with "_"
    assert sd_unet.get_unet_option(LABEL) == OrtTurboOption()
    shared.opts.data["sd_unet"] = "Automatic"
    assert isinstance(sd_unet.get_unet_option(), OrtTurboOption)
    other = StubSdModel("tiny-sd1", "models/Stable-diffusion/other/tiny-sd1.safetensors")
    shared.sd_model = other  # no export for this one: Automatic means the PyTorch UNet
    assert sd_unet.get_unet_option() is None


def test_refresh_does_not_reload_the_session(fresh_webui, exported, monkeypatch):
    created = []
    real = OrtTurboOption.create_unet
    monkeypatch.setattr(OrtTurboOption, "create_unet", lambda self: created.append(1) or real(self))
    sd_unet.apply_unet(LABEL)
    session = sd_unet.current_unet.ort.session
    sd_unet.list_unets()  # new option objects, equal by value
    sd_unet.apply_unet(LABEL)
    assert created == [1] and sd_unet.current_unet.ort.session is session


class ForeignUnet(sd_unet.SdUnet):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, timesteps, context, *args, **kwargs):
        self.calls += 1
        return x[:, :4] * 0


class ForeignOption(sd_unet.SdUnetOption):
    label = "[TRT] something"
    model_name = "something"

    def create_unet(self):
        return ForeignUnet()


def test_a_foreign_option_is_left_alone(fresh_webui, exported, extension):
    from conftest import script_runner
    from modules.processing import StableDiffusionProcessing, run_job

    script_callbacks.on_list_unets(lambda res: res.append(ForeignOption()))
    try:
        sd_unet.list_unets()
        shared.opts.data["sd_unet"] = ForeignOption.label
        p = StableDiffusionProcessing(script_runner(extension), steps=2, cfg_scale=7)
        processed = run_job(p)
        assert isinstance(sd_unet.current_unet, ForeignUnet) and sd_unet.current_unet.calls == 2
        assert "ORT Turbo:" not in processed.infotexts[0]
    finally:
        script_callbacks.callbacks["list_unets"].pop()
        sd_unet.list_unets()


def test_tab_and_accordion_build_with_the_webuis_gradio(extension, exported):
    from lib_ort.webui import ui

    assert gr.__version__ == "3.41.2"
    tab = ui.build_tab()
    assert isinstance(tab, gr.Blocks)
    with gr.Blocks():
        components = ui.build_accordion(is_img2img=False, preset=ui.TurboPreset("txt2img"))
    assert len(components) == 1 and isinstance(components[0], gr.Checkbox)
    rows, ids = ui._table()
    headers = [header for header, _ in ui.COLUMNS]
    row = rows[ids.index(exported["id"])]
    assert row[headers.index("valid")] == "yes"
    assert row[headers.index("provider")] == "CPU"  # the label a user reads; the manifest keeps the key
