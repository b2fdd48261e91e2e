"""The VAE on ONNX Runtime inside the (stand-in) WebUI: routing only while ORT Turbo is the SD Unet,
the same tensors as the PyTorch VAE for decode and img2img's encode, TAESD left alone, a swapped VAE
never served by another VAE's artefact, and the WebUI's functions put back after every job."""

import threading

import pytest
import torch

from conftest import StubSdModel, script_runner
from modules.sd_models import CheckpointInfo
from modules import devices, sd_unet, sd_vae, sd_vae_taesd, shared
from modules.infotext_utils import parse_generation_parameters
from modules.processing import StableDiffusionProcessing, run_job

from lib_ort.recipes import cpu_fp16_vae_recipe
from lib_ort.vae import forget_fp16_overflows
from lib_ort.bench.vae_architectures import build_vae
from lib_ort.pipeline import prepare_vae
from lib_ort.webui import settings
from lib_ort.webui.job import current_job
from lib_ort.webui import vae as ort_vae
from lib_ort.webui.unet import LABEL


class VaeSdModel(StubSdModel):
    """The tiny SD2 checkpoint with a real ldm VAE and ldm's LatentDiffusion first-stage methods."""

    scale_factor = 0.18215

    def __init__(self):
        super().__init__("tiny-sd2", "models/Stable-diffusion/turbo/tiny-sd2-vae.safetensors")
        self.first_stage_model = build_vae("tiny-ldm", seed=0).to(devices.dtype_vae)

    @torch.no_grad()
    def decode_first_stage(self, z):
        return self.first_stage_model.decode(1.0 / self.scale_factor * z)

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, posterior):
        return self.scale_factor * posterior.sample()


@pytest.fixture(scope="module")
def vae_model(extension):
    return VaeSdModel()


@pytest.fixture(scope="module")
def vae_exported(extension, exported, vae_model):
    shared.sd_model = vae_model
    return ort_vae.export_loaded_vae("cpu")


@pytest.fixture()
def webui(fresh_webui, vae_model, vae_exported):
    shared.sd_model = vae_model
    vae_model.first_stage_model.to(devices.dtype_vae)
    sd_vae.loaded_vae_file = None
    calls = {"decoder": 0, "encoder": 0}
    hooks = [getattr(vae_model.first_stage_model, part).register_forward_hook(
        lambda m, i, o, part=part: calls.__setitem__(part, calls[part] + 1)) for part in calls]
    yield calls
    for h in hooks:
        h.remove()
    sd_vae.loaded_vae_file = None
    sd_unet.apply_unet("None")
    shared.sd_model = fresh_webui.sd_model


def run(extension, **kwargs):
    p = StableDiffusionProcessing(script_runner(extension), **kwargs)
    return p, run_job(p)


def pixels(images):
    return ((torch.stack(images).float() + 1) / 2).clamp(0, 1) * 255


def no_patch_left(model):
    return not {"decode", "encode"} & set(vars(model.first_stage_model))


def test_decode_runs_on_ort_while_ort_turbo_is_the_sd_unet(webui, extension, vae_model, vae_exported):
    shared.opts.data["sd_unet"] = LABEL
    p, ours = run(extension, batch_size=2, steps=1, cfg_scale=1.0, seed=3)
    assert webui["decoder"] == 0  # no PyTorch decode at all
    assert f"ORT Turbo VAE: {vae_exported['id']} (CPU)" in ours.infotexts[0]
    assert no_patch_left(vae_model)

    shared.opts.data["sd_unet"] = "None"
    _, reference = run(extension, batch_size=2, steps=1, cfg_scale=1.0, seed=3)
    assert webui["decoder"] == 2  # the WebUI decodes one image at a time
    assert "ORT Turbo VAE" not in reference.infotexts[0]
    # same latents (the ORT UNet and the PyTorch UNet agree), same images within fp16 rounding
    assert float((pixels(ours.images) - pixels(reference.images)).abs().max()) <= 2


def test_another_sd_unet_is_never_bypassed(webui, extension, vae_model):
    class Other(sd_unet.SdUnetOption):
        label = "Other"

        def create_unet(self):
            return sd_unet.SdUnet()

    sd_unet.unet_options.append(Other())
    try:
        shared.opts.data["sd_unet"] = "Other"
        p = StableDiffusionProcessing(script_runner(extension))
        p.scripts.process(p)
        assert current_job().vae_route is None and no_patch_left(vae_model)
    finally:
        sd_unet.unet_options[:] = [o for o in sd_unet.unet_options if o.label != "Other"]
    # and a route installed for ORT Turbo steps aside if another SD Unet is active when the VAE is called
    shared.opts.data["sd_unet"] = LABEL
    p = StableDiffusionProcessing(script_runner(extension))
    p.scripts.process(p)
    route = current_job().vae_route
    assert route is not None and route.serving()
    sd_unet.current_unet = sd_unet.SdUnet()
    try:
        vae_model.first_stage_model.decode(torch.randn(1, 4, 8, 8, dtype=devices.dtype_vae))
        assert webui["decoder"] == 1 and route.ort_calls == 0
    finally:
        sd_unet.current_unet = None
        ort_vae.finish_job()
    assert no_patch_left(vae_model)


def test_the_setting_turns_it_off(webui, extension):
    shared.opts.data["sd_unet"] = LABEL
    shared.opts.data[settings.VAE_ON_ORT] = False
    _, processed = run(extension, steps=1, cfg_scale=1.0)
    assert webui["decoder"] == 1 and "ORT Turbo VAE" not in processed.infotexts[0]


def test_taesd_picked_by_the_user_is_left_alone(webui, extension):
    shared.opts.data["sd_unet"] = LABEL
    shared.opts.data["sd_vae_decode_method"] = "TAESD"
    before = sd_vae_taesd.calls["decoder"]
    _, processed = run(extension, batch_size=2, steps=1, cfg_scale=1.0)
    assert sd_vae_taesd.calls["decoder"] == before + 2
    assert webui["decoder"] == 0 and "ORT Turbo VAE" not in processed.infotexts[0]


def test_a_vae_picked_in_the_dropdown_is_not_served_by_the_checkpoints_vae_artefact(webui, extension, tmp_path):
    shared.opts.data["sd_unet"] = LABEL
    other = tmp_path / "other-vae.safetensors"
    other.write_bytes(b"another VAE's weights")
    sd_vae.loaded_vae_file = str(other)
    p, processed = run(extension, steps=1, cfg_scale=1.0)
    assert webui["decoder"] == 1
    # what ran in the infotext, in a form that pastes back as it was written; the advice under the image
    assert parse_generation_parameters(processed.infotexts[0])["ORT Turbo VAE"] == "PyTorch (no artefact)"
    assert any("no CPU VAE artefact for other-vae.safetensors" in c for c in p.comments)


def test_img2img_encode_runs_on_ort_with_the_same_posterior(webui, extension, vae_model):
    images = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    latents = {}
    for unet in (LABEL, "None"):
        shared.opts.data["sd_unet"] = unet
        p = StableDiffusionProcessing(script_runner(extension), batch_size=2, steps=1, cfg_scale=1.0,
                                      init_images=images)
        torch.manual_seed(0)  # the posterior's sample() draws from torch's generator
        run_job(p)
        latents[unet] = p.init_latent.float()
    assert webui["encoder"] == 2  # only the PyTorch run encoded in PyTorch, one image at a time
    assert latents[LABEL].shape == (2, 4, 8, 8)
    rel = (latents[LABEL] - latents["None"]).abs().max() / latents["None"].abs().max()
    assert float(rel) < 2e-3  # the PyTorch VAE is fp16 here; ORT computes in fp32
    assert no_patch_left(vae_model)


def test_patches_are_removed_when_the_job_fails(webui, extension, vae_model):
    shared.opts.data["sd_unet"] = LABEL
    p = StableDiffusionProcessing(script_runner(extension), steps=2, cfg_scale=1.0, fail_at_step=0)
    with pytest.raises(RuntimeError, match="on purpose"):
        run_job(p)
    assert current_job().vae_route is None and no_patch_left(vae_model)


def test_the_fp16_vae_setting_chooses_the_ort_vae_precision(webui):
    assert ort_vae.wanted_precision("cuda") == "fp16" and ort_vae.wanted_precision("cpu") == "fp32"
    shared.cmd_opts.no_half_vae = True
    assert ort_vae.wanted_precision("cuda") == "fp32"
    shared.cmd_opts.no_half_vae = False
    shared.opts.data[settings.FP16_VAE] = False
    assert ort_vae.wanted_precision("dml") == "fp32"


def test_the_vae_artefact_is_keyed_by_checkpoint_and_vae(vae_exported, vae_model):
    assert vae_exported["kind"] == "vae" and vae_exported["ep"] == "cpu" and vae_exported["precision"] == "fp32"
    assert vae_exported["checkpoint"]["hash"] == vae_model.sd_checkpoint_info.sha256
    assert vae_exported["vae"]["hash"] == vae_model.sd_checkpoint_info.sha256  # the built-in VAE
    assert vae_exported["vae"]["name"].startswith("built-in VAE of")
    assert next(vae_model.first_stage_model.parameters()).dtype == devices.dtype_vae  # put back after the trace


# -- the NaN guard inside a job ---------------------------------------------------------------------


class OverflowSdModel(VaeSdModel):
    """Another checkpoint whose built-in VAE overflows in fp16 (as the stock SDXL VAE does)."""

    def __init__(self):
        super().__init__()
        self.sd_checkpoint_info = CheckpointInfo("models/Stable-diffusion/turbo/overflow-vae.safetensors", "8" * 64)
        vae = build_vae("tiny-ldm", seed=5)
        with torch.no_grad():  # finite in fp32, beyond fp16's 65504 in the last layer
            vae.decoder.conv_out.weight *= 1e6
            vae.decoder.conv_out.bias *= 1e6
        self.first_stage_model = vae.to(devices.dtype_vae)




@pytest.fixture(scope="module")
def overflow_model(extension):
    from lib_ort.webui import service

    model = OverflowSdModel()
    checkpoint = service.checkpoint_record(model.sd_checkpoint_info)
    record = ort_vae.vae_record(model)
    for precision, recipe in (("fp16", cpu_fp16_vae_recipe()), ("fp32", None)):
        prepare_vae(model.first_stage_model, service.registry(), checkpoint, record, "cpu", precision,
                    toolchain=service.toolchain(), recipe=recipe)
    model.first_stage_model.to(devices.dtype_vae)
    service.artefacts_changed()
    return model


def test_an_fp16_vae_that_overflows_is_decoded_again_in_fp32_and_remembered(fresh_webui, extension, overflow_model,
                                                                               monkeypatch, capsys):
    shared.sd_model = overflow_model
    shared.opts.data["sd_unet"] = LABEL
    monkeypatch.setattr(ort_vae, "wanted_precision", lambda ep: "fp16")  # what CUDA with "fp16 VAE" asks for
    latents = []
    decode_first_stage = overflow_model.decode_first_stage
    monkeypatch.setattr(overflow_model, "decode_first_stage", lambda z: latents.append(z) or decode_first_stage(z))
    forget_fp16_overflows()
    try:
        p_first, first = run(extension, batch_size=2, steps=1, cfg_scale=1.0, seed=5)
        console = capsys.readouterr().err
        p_second, second = run(extension, steps=1, cfg_scale=1.0, seed=6)
        console_again = capsys.readouterr().err
    finally:
        forget_fp16_overflows()
        overflow_model.first_stage_model.to(torch.float16)

    # never a black or NaN image, and the WebUI's own NaN revert (VAE to fp32 for good) was not needed
    assert all(torch.isfinite(img).all() and float(img.std()) > 0 for img in first.images + second.images)
    assert devices.dtype_vae == torch.float16
    with torch.no_grad():  # the fp32 ORT decode is the fp32 PyTorch decode
        vae = overflow_model.first_stage_model.float()
        reference = [vae.decode(z.float() / overflow_model.scale_factor)[0] for z in latents[:2]]
    diff = (pixels(first.images) - pixels(reference)).abs().max()
    assert float(diff) <= 1
    # said once in the console, and under both images; the infotexts say only what ran
    assert console.count("gave NaN/inf") == 1 and "gave NaN/inf" not in console_again
    assert any("decoded again in fp32" in c for c in p_first.comments)
    assert any("overflows in fp16 (seen earlier this session)" in c for c in p_second.comments)
    assert "fp32" not in first.infotexts[0] and "seen earlier" not in second.infotexts[0]
    assert no_patch_left(overflow_model)


# -- robustness: previews from another thread, no runtime, the extension unloaded ----------------------------

def test_live_previews_decode_from_the_progress_thread_while_the_job_runs(webui, extension, vae_model, vae_exported):
    """The progress API's thread calls ``state.set_current_image`` between sampling steps; with the "Full"
    preview method that is ``decode_first_stage`` on the job's patched VAE, from another thread."""
    from modules import errors

    shared.opts.data.update({"sd_unet": LABEL, "show_progress_type": "Full", "show_progress_every_n_steps": 1})
    p = StableDiffusionProcessing(script_runner(extension), steps=3, cfg_scale=1.0)

    def preview_from_another_thread(step):
        thread = threading.Thread(target=shared.state.set_current_image)
        thread.start()
        thread.join(60)

    p.step_callback = preview_from_another_thread
    processed = run_job(p)
    assert not errors.exception_records  # a failed preview is only recorded by the WebUI: look there
    assert shared.state.id_live_preview >= 2 and torch.isfinite(shared.state.current_image).all()
    assert webui["decoder"] == 0  # the previews and the image all decoded on ONNX Runtime
    assert f"ORT Turbo VAE: {vae_exported['id']} (CPU)" in processed.infotexts[0]
    assert no_patch_left(vae_model)
    # a preview after the job uses the WebUI's own decode again
    shared.state.sampling_step += 1
    shared.state.set_current_image()
    assert webui["decoder"] == 1


def test_no_onnxruntime_the_pytorch_vae_decodes_and_says_why(webui, extension, vae_model):
    from test_robustness import onnxruntime_import

    shared.opts.data["sd_unet"] = LABEL
    ort_vae.forget_sessions()  # as in a fresh WebUI: no VAE session made before onnxruntime went missing
    with onnxruntime_import("missing"):
        p, processed = run(extension, steps=1, cfg_scale=1.0)
    assert webui["decoder"] == 1 and torch.isfinite(processed.images[0]).all()
    assert parse_generation_parameters(processed.infotexts[0])["ORT Turbo VAE"] == "PyTorch (fallback)"
    assert any("PyTorch VAE used: ONNX Runtime cannot be imported" in c for c in p.comments), p.comments
    assert no_patch_left(vae_model)


def test_unloading_the_extension_mid_job_undoes_every_patch(webui, extension, vae_model):
    """"Apply and restart UI" or the extension disabled: ``on_script_unloaded`` puts the WebUI back as it was."""
    import gradio as gr

    from modules import script_callbacks

    shared.opts.data.update({"sd_unet": LABEL, settings.FP16_VAE: False})
    dtype_before = devices.dtype_vae
    p = StableDiffusionProcessing(script_runner(extension), steps=2, cfg_scale=1.0)
    seen = {}

    def unload_at_first_step(step):
        if step:
            return
        seen["during"] = (shared.opts.skip_early_cond, devices.dtype_vae, "close" in vars(p),
                          current_job().vae_route is not None, sd_unet.current_unet is not None)
        script_callbacks.script_unloaded_callback()
        seen["after"] = (shared.opts.data.get("skip_early_cond", "absent"), devices.dtype_vae, "close" in vars(p),
                         no_patch_left(vae_model), sd_unet.current_unet,
                         [k for k in shared.options_templates if k.startswith("ort_turbo_")])

    p.step_callback = unload_at_first_step
    try:
        processed = run_job(p)
    finally:
        shared.options_templates.update(settings.option_templates(shared, gr))  # the extension loaded again
    assert seen["during"] == (1.0, torch.float32, True, True, True)
    assert seen["after"] == ("absent", dtype_before, False, True, None, [])
    assert torch.isfinite(processed.images[0]).all()  # the rest of the job ran on the WebUI's own UNet and VAE
    assert vae_model.first_stage_model.decoder.conv_in.weight.dtype == dtype_before


def test_an_onnx_runtime_error_while_decoding_is_a_pytorch_decode_with_the_reason(webui, extension, vae_model,
                                                                                   monkeypatch):
    from lib_ort.vae import OrtVae

    def failing(self, *args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(OrtVae, "_run", failing)
    shared.opts.data["sd_unet"] = LABEL
    p, processed = run(extension, steps=1, cfg_scale=1.0)
    assert webui["decoder"] == 1 and torch.isfinite(processed.images[0]).all()
    reason = "ONNX Runtime failed (RuntimeError: CUDA error: an illegal memory access was encountered)"
    assert parse_generation_parameters(processed.infotexts[0])["ORT Turbo VAE"] == "PyTorch (fallback)"
    assert any(reason in c for c in p.comments), p.comments
    assert no_patch_left(vae_model)


def test_an_openvino_vae_runs_in_the_set_precision_and_a_change_loads_it_again(fresh_webui, monkeypatch):
    """This onnxruntime has no OpenVINO: a recorder stands for OrtVae; the runner cache and the setting are real."""
    from types import SimpleNamespace

    made = []
    monkeypatch.setattr(ort_vae, "OrtVae", lambda artefact, **options: made.append(options) or SimpleNamespace())
    monkeypatch.setattr(ort_vae, "_runners", {})
    artefact = SimpleNamespace(folder="/artefacts/vae-openvino", manifest={"created": "t0"}, ep="openvino")
    shared.opts.data[settings.OPENVINO_PRECISION] = "bf16"
    first = ort_vae._runner(artefact)
    assert ort_vae._runner(artefact) is first and made == [{"openvino_precision": "bf16"}]
    shared.opts.data[settings.OPENVINO_PRECISION] = "fp32"
    assert ort_vae._runner(artefact) is not first and made[-1] == {"openvino_precision": "fp32"}
    ort_vae._runner(SimpleNamespace(folder="/artefacts/vae-cpu", manifest={"created": "t0"}, ep="cpu"))
    assert made[-1] == {"openvino_precision": "auto"}  # the setting is OpenVINO's alone
