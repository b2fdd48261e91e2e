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
        "Automatic", "CUDA", "TensorRT", "DirectML", "OpenVINO (CPU)", "CPU"]
    precision = shared.options_templates[settings.OPENVINO_PRECISION]
    assert precision.section == ("ort_turbo", "ORT Turbo") and precision.component_args["choices"] == [
        "Automatic", "bf16", "fp32"]
    assert shared.opts.ort_turbo_openvino_precision == "Automatic"
    assert "Unavailable here" in shared.options_templates[settings.PROVIDER].comment_after  # CPU-only runtime


BF16_CPU = frozenset({"avx512f", "avx512_bf16", "amx_bf16"})
AVX512_CPU = frozenset({"avx2", "avx512f", "avx512_vnni"})


def test_provider_resolution():
    status = {"CUDA": "not here", "TensorRT": "not here", "DirectML": "not here", "OpenVINO (CPU)": "not here",
              "CPU": None}
    for flags in (BF16_CPU, AVX512_CPU):
        assert settings.resolve_provider("Automatic", status, flags) == "cpu"
        assert settings.resolve_provider("Automatic", dict(status, CUDA=None), flags) == "cuda"
        assert settings.resolve_provider("Automatic", dict(status, TensorRT=None), flags) == "cpu"  # only when chosen
        assert settings.resolve_provider("TensorRT", status, flags) == "tensorrt"
        assert settings.resolve_provider("OpenVINO (CPU)", status, flags) == "openvino"


def test_automatic_takes_openvino_only_where_it_runs_in_bf16_and_after_the_gpus():
    openvino = {"CUDA": "not here", "TensorRT": "not here", "DirectML": "not here", "OpenVINO (CPU)": None, "CPU": None}
    assert settings.resolve_provider("Automatic", openvino, BF16_CPU) == "openvino"
    assert settings.resolve_provider("Automatic", openvino, AVX512_CPU) == "cpu"  # fp32 OpenVINO is not faster
    assert settings.resolve_provider("Automatic", openvino, frozenset()) == "cpu"  # flags unknown
    assert settings.resolve_provider("Automatic", dict(openvino, CUDA=None), BF16_CPU) == "cuda"
    assert settings.resolve_provider("Automatic", dict(openvino, DirectML=None), BF16_CPU) == "dml"


def test_openvino_not_installed_says_which_package_and_where_to_read(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    settings._status_of_this_install.cache_clear()
    try:
        why = settings.provider_status()["OpenVINO (CPU)"]
    finally:
        settings._status_of_this_install.cache_clear()
    assert "needs onnxruntime-openvino" in why and "README" in why


def test_openvino_precision_setting_reaches_the_session_and_a_change_binds_again(fresh_webui, exported, monkeypatch):
    """This onnxruntime has no OpenVINO: a recorder stands for OrtUnet, the WebUI's side is real."""
    from lib_ort.webui import service
    from lib_ort.webui import unet as webui_unet

    made = []

    class Recorder:
        def __init__(self, artefact, **options):
            made.append(options)
            self.artefact = artefact
            self.session = object()  # a live session, as OrtUnet has after its start

    artefact = service.registry().load(exported["id"])
    monkeypatch.setattr(webui_unet, "OrtUnet", Recorder)
    monkeypatch.setattr(service, "find_artefact", lambda info, ep: artefact if ep == "openvino" else None)
    shared.opts.data.update({settings.PROVIDER: "OpenVINO (CPU)", settings.OPENVINO_PRECISION: "bf16"})
    unet = webui_unet.OrtTurboUnet()
    assert unet.bind() is None and unet.bind() is None
    assert made == [{"cuda_graph": False, "openvino_precision": "bf16"}]
    shared.opts.data[settings.OPENVINO_PRECISION] = "fp32"
    assert unet.bind() is None and made[-1]["openvino_precision"] == "fp32"
    del shared.opts.data[settings.OPENVINO_PRECISION]  # the default: Automatic
    assert unet.bind() is None and made[-1]["openvino_precision"] == "auto" and len(made) == 3


def test_automatic_keeps_the_cpu_artefact_until_the_checkpoint_is_exported_for_openvino(fresh_webui, exported,
                                                                                       monkeypatch):
    """onnxruntime-openvino installed on a bf16 CPU makes Automatic choose OpenVINO; a checkpoint exported for the
    CPU before keeps running on ONNX Runtime (not PyTorch) until it has an OpenVINO artefact."""
    from lib_ort import cpu_features
    from lib_ort.webui import service
    from lib_ort.webui import unet as webui_unet

    served = []

    class Recorder:
        def __init__(self, artefact, **options):
            served.append(artefact.id)
            self.artefact = artefact
            self.session = object()  # a live session, as OrtUnet has after its start

    monkeypatch.setattr(webui_unet, "OrtUnet", Recorder)
    monkeypatch.setattr(settings, "provider_status", lambda: {"CUDA": "not here", "TensorRT": "not here",
                                                              "DirectML": "not here", "OpenVINO (CPU)": None,
                                                              "CPU": None})
    monkeypatch.setattr(cpu_features, "this_cpu_flags", lambda: BF16_CPU)
    shared.opts.data.pop(settings.PROVIDER, None)  # Automatic
    assert service.providers_to_try() == ["openvino", "cpu"]
    assert exported["ep"] == "cpu" and service.find_artefact(shared.sd_model.sd_checkpoint_info, "openvino") is None
    unet = webui_unet.OrtTurboUnet()
    assert unet.bind() is None and served == [exported["id"]]
    assert OrtTurboOption().model_name is not None  # the SD Unet "Automatic" still picks ORT Turbo
    # chosen by hand, OpenVINO means OpenVINO: the CPU artefact does not stand in
    shared.opts.data[settings.PROVIDER] = "OpenVINO (CPU)"
    assert service.providers_to_try() == ["openvino"]
    assert "no OpenVINO (CPU) artefact" in unet.bind() and served == [exported["id"]]


def test_the_infotext_names_the_precision_openvino_ran_in():
    from lib_ort.webui.job import Job

    class Served:
        def __init__(self, id, runs_on):
            self.id, self.runs_on = id, runs_on

    job = Job()
    job.ran_on_ort(Served("abc-openvino", "OpenVINO (CPU), bf16"))
    job.ran_on_ort(Served("abc-openvino", "OpenVINO (CPU), bf16"))
    job.ran_on_ort(Served("def-cpu", "CPU"))
    assert job.ort_calls == 3 and job.infotext() == "abc-openvino (OpenVINO (CPU), bf16) + def-cpu (CPU)"


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
