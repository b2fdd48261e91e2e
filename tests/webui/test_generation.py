"""Generation-shaped runs through the stand-in's process_images and CFG denoiser."""

import json

import pytest
import torch

from conftest import StubSdModel, script_runner
from modules import devices, sd_unet, shared
from modules.processing import StableDiffusionProcessing, run_job

from lib_ort.webui.unet import LABEL


def job(extension, cfg_free=True, **kwargs):
    return StableDiffusionProcessing(script_runner(extension, cfg_free), **kwargs)


def run(extension, cfg_free=True, **kwargs):
    p = job(extension, cfg_free, **kwargs)
    return p, run_job(p)


# -- CFG-free -----------------------------------------------------------------------------------------

# below 1 the scale still blends the two predictions (0 is the negative prompt's image): CFG-free would ignore it
@pytest.mark.parametrize("cfg_free, cfg_scale, rows", [(True, 1.0, 2), (False, 1.0, 4), (True, 7.0, 4), (True, 0.5, 4),
                                                       (True, 0.0, 4)])
def test_unet_rows_per_call(fresh_webui, exported, extension, sd2_model, cfg_free, cfg_scale, rows):
    shared.opts.data["sd_unet"] = LABEL
    p, processed = run(extension, cfg_free, batch_size=2, steps=3, cfg_scale=cfg_scale)
    assert sd2_model.rows_per_call == [rows] * 3
    assert ("ORT Turbo CFG-free: True" in processed.infotexts[0]) == (rows == 2)


def test_cfg_free_also_serves_the_pytorch_unet(fresh_webui, extension, sd2_model):
    shared.opts.data["sd_unet"] = "None"
    run(extension, batch_size=1, steps=2, cfg_scale=1.0)
    assert sd2_model.rows_per_call == [1, 1]


def test_the_stand_in_has_the_webuis_restore_trap(fresh_webui, extension):
    """override_settings of a key the user never set stays set: why ORT Turbo restores it itself."""
    run(extension, cfg_free=False, steps=1, cfg_scale=7, override_settings={"skip_early_cond": 1.0})
    assert shared.opts.data.get("skip_early_cond") == 1.0


@pytest.mark.parametrize("ending", ["finished", "failed", "interrupted"])
@pytest.mark.parametrize("before", [{}, {"skip_early_cond": 0.25, "batch_cond_uncond": True}])
def test_settings_are_restored_however_the_job_ends(fresh_webui, exported, extension, ending, before):
    shared.opts.data.update(before)
    shared.opts.data["sd_unet"] = LABEL
    seen = {}

    class Probe:
        def process_batch(self, p, *args, **kwargs):
            seen["skip"] = shared.opts.skip_early_cond
            if ending == "interrupted":
                shared.state.interrupted = True

    p = job(extension, steps=2, cfg_scale=1.0, fail_at_step=0 if ending == "failed" else None)
    p.scripts.items.append((type("S", (Probe,), {"before_process": lambda *a: None, "process": lambda *a: None,
                                                 "postprocess_batch": lambda *a, **k: None,
                                                 "postprocess": lambda *a: None})(), ()))
    if ending == "failed":
        with pytest.raises(RuntimeError, match="on purpose"):
            run_job(p)
    else:
        run_job(p)
    assert seen["skip"] == 1.0  # CFG-free was on during the job
    assert {k: shared.opts.data.get(k, "absent") for k in ("skip_early_cond", "batch_cond_uncond")} == {
        "skip_early_cond": before.get("skip_early_cond", "absent"),
        "batch_cond_uncond": before.get("batch_cond_uncond", "absent")}
    # the next job at CFG 7 uses its negative prompt again (unless the user's own setting skips it)
    shared.state.interrupted = False
    model = shared.sd_model
    model.rows_per_call.clear()
    run(extension, steps=1, cfg_scale=7.0)
    assert model.rows_per_call == [1 if before else 2]


@pytest.mark.parametrize("how", ["api", "apply settings"])
def test_a_settings_save_during_a_cfg_free_job_writes_the_users_values(fresh_webui, exported, extension, tmp_path,
                                                                       how):
    """A save while a 3-batch CFG-free job runs (on a real WebUI v1.10.1 config.json kept
    ``"skip_early_cond": 1.0``, and every later CFG-7 job after a restart ignored its negative prompt).

    ``POST /sdapi/v1/options`` sets what it is given and saves (modules/api/api.py ``set_config``); Apply
    settings and a quicksetting set every shown value, the slider's 0 for ``skip_early_cond`` too, and save.
    Either way config.json gets the user's values, and the running job stays CFG-free."""
    config = tmp_path / "config.json"
    shared.opts.data["sd_unet"] = LABEL
    seen = []

    def save_settings(step):
        if how == "api":
            shared.opts.set("sd_unet", LABEL, is_api=True)
        else:
            shared.opts.set("skip_early_cond", 0.0)
        shared.opts.save(config)
        seen.append(shared.opts.skip_early_cond)

    model = shared.sd_model
    p = job(extension, batch_size=1, n_iter=3, steps=2, cfg_scale=1.0)
    p.step_callback = save_settings
    run_job(p)
    assert len(seen) == 6 and set(seen) == {1.0} and model.rows_per_call == [1] * 6  # CFG-free all along
    saved = json.loads(config.read_text())
    assert saved.get("skip_early_cond", 0.0) == 0.0 and "batch_cond_uncond" not in saved, saved
    shared.opts.load(config)  # the restart
    model.rows_per_call.clear()
    run(extension, steps=1, cfg_scale=7.0)
    assert model.rows_per_call == [2]  # the negative prompt is used


def test_inpaint_model_skips_with_sliced_calls(fresh_webui, extension):
    inpaint = StubSdModel("tiny-sd2-inpaint", "models/Stable-diffusion/tiny-inpaint.safetensors")
    shared.sd_model = inpaint
    seen = {}
    p = job(extension, batch_size=2, steps=2, cfg_scale=1.0)
    real = inpaint.denoise

    def spy(*args):
        seen["batch_cond_uncond"] = shared.opts.batch_cond_uncond
        return real(*args)

    inpaint.denoise = spy
    run_job(p)
    assert inpaint.rows_per_call == [2, 2] and seen["batch_cond_uncond"] is False
    assert "batch_cond_uncond" not in shared.opts.data
    shared.opts.data["batch_cond_uncond"] = True  # and the WebUI's own bug is real in the stand-in:
    inpaint.rows_per_call.clear()
    with pytest.raises(RuntimeError):
        run(extension, cfg_free=False, batch_size=2, steps=1, cfg_scale=1.0, override_settings={"skip_early_cond": 1.0})


def test_img2img_fix_steps_for_turbo_step_counts(fresh_webui, extension):
    seen = {}

    class Probe(StableDiffusionProcessing):
        def sample(self):
            seen["fix"] = shared.opts.img2img_fix_steps
            return super().sample()

    p = Probe(script_runner(extension), steps=1, cfg_scale=1.0, init_images=[object()])
    run_job(p)
    assert seen["fix"] is True and "img2img_fix_steps" not in shared.opts.data


# -- ORT vs PyTorch and fallbacks ---------------------------------------------------------------

def images_with(extension, label, **kwargs):
    shared.opts.data["sd_unet"] = label
    p, processed = run(extension, seed=3, **kwargs)
    return processed


def test_ort_turbo_matches_the_pytorch_unet_and_says_so(fresh_webui, exported, extension):
    ort = images_with(extension, LABEL, batch_size=2, steps=2, cfg_scale=1.0)
    ref = images_with(extension, "None", batch_size=2, steps=2, cfg_scale=1.0)
    assert f"ORT Turbo: {exported['id']} (CPU)" in ort.infotexts[0]
    assert "ORT Turbo:" not in ref.infotexts[0]
    diff = (ort.images[0] - ref.images[0]).abs().max() / ref.images[0].abs().max()
    assert diff < 5e-3  # fp16 VAE on both; the UNets agree to fp32 rounding


def assert_pytorch_fallback(extension, reason, **kwargs):
    ort = images_with(extension, LABEL, **kwargs)
    assert 'ORT Turbo: "PyTorch fallback: ' in ort.infotexts[0], ort.infotexts[0]
    assert reason in ort.infotexts[0], ort.infotexts[0]
    ref = images_with(extension, "None", **kwargs)
    assert torch.equal(ort.images[0], ref.images[0])  # the PyTorch UNet really ran
    return ort


def test_fallback_no_export_for_this_checkpoint(fresh_webui, extension):
    shared.sd_model = StubSdModel("tiny-sd1", "models/Stable-diffusion/not-exported.safetensors")
    assert_pytorch_fallback(extension, "no CPU artefact for not-exported.safetensors", steps=1)


def test_fallback_shape_out_of_range(fresh_webui, exported, extension):
    assert_pytorch_fallback(extension, "batch 18 is outside this artefact's range 1..16",
                            batch_size=9, steps=1, cfg_scale=7.0)


def test_fallback_hypernetwork_in_the_prompt(fresh_webui, exported, extension):
    assert_pytorch_fallback(extension, "hypernetworks patch the PyTorch UNet's attention", steps=1,
                            extra_network_data={"hypernet": [object()]})


def test_fallback_controlnet(fresh_webui, exported, extension, sd2_model):
    calls = []
    unet = sd2_model.unet
    original = type(unet).forward

    def controlnet_forward(x, timesteps=None, context=None, **kwargs):  # an instance-level forward
        calls.append(x.shape[0])
        saved = sd_unet.current_unet
        sd_unet.current_unet = None
        try:
            return original(unet, x, timesteps, context)
        finally:
            sd_unet.current_unet = saved

    unet.forward = controlnet_forward
    ort = images_with(extension, LABEL, steps=1)
    assert calls and "ControlNet or another extension" in ort.infotexts[0]
    assert next(unet.parameters()).device == devices.device


def test_fallback_corrupt_artefact(fresh_webui, exported, extension, tmp_path):
    from lib_ort.webui import service

    weights = service.registry().root / exported["id"] / "weights.pb"
    data = weights.read_bytes()
    try:
        with open(weights, "r+b") as f:
            f.truncate(100)
        service.artefacts_changed()
        assert_pytorch_fallback(extension, "truncated or replaced", steps=1)
    finally:
        weights.write_bytes(data)
        service.artefacts_changed()


def test_fallback_when_another_checkpoint_is_routed_to_us(fresh_webui, exported, extension):
    """sd_checkpoints_limit > 1: the WebUI swaps the model without apply_unet (refiner, hires checkpoint)."""
    shared.opts.data["sd_unet"] = LABEL
    sd_unet.apply_unet()
    shared.sd_model = StubSdModel("tiny-sd1", "models/Stable-diffusion/refiner.safetensors")
    p, processed = run(extension, steps=1)
    assert "no CPU artefact for refiner.safetensors" in processed.infotexts[0]


# -- fp16 VAE -------------------------------------------------------------------------------------

class VaeProbe:
    def __init__(self, revert=False):
        self.seen = None
        self.revert = revert

    def before_process(self, p, *a):
        pass

    def process(self, p, *a):
        pass

    def process_batch(self, p, *a, **k):
        self.seen = (devices.dtype_vae, shared.sd_model.first_stage_model.scale.dtype)
        if self.revert:  # what the WebUI's NaN auto-revert does
            devices.dtype_vae = torch.float32
            shared.sd_model.first_stage_model.to(torch.float32)

    def postprocess_batch(self, p, *a, **k):
        pass

    def postprocess(self, p, *a):
        pass


def vae_job(extension, probe, sd_unet=LABEL):
    p = job(extension, steps=1, override_settings={"sd_unet": sd_unet})
    p.scripts.items.append((probe, ()))
    run_job(p)


@pytest.mark.parametrize("sd_unet", ["None", "Automatic"])
def test_the_vae_dtype_is_left_alone_when_another_sd_unet_runs(fresh_webui, extension, sd_unet):
    """"fp16 VAE" is ORT Turbo's setting: a job on the PyTorch UNet (SD Unet None, or Automatic for a
    checkpoint without an artefact) decodes in the dtype the WebUI chose, as without the extension."""
    from modules.sd_models import CheckpointInfo

    own = shared.sd_model.sd_checkpoint_info
    shared.sd_model.sd_checkpoint_info = CheckpointInfo("models/Stable-diffusion/no-artefact.safetensors", "0" * 64)
    try:
        for fp16_vae in (False, True):
            shared.opts.data["ort_turbo_fp16_vae"] = fp16_vae
            devices.dtype_vae = torch.float32  # e.g. --no-half-vae's choice, or an earlier NaN revert
            shared.sd_model.first_stage_model.to(torch.float32)
            probe = VaeProbe()
            vae_job(extension, probe, sd_unet)
            assert probe.seen == (torch.float32, torch.float32) and devices.dtype_vae == torch.float32
    finally:
        shared.sd_model.sd_checkpoint_info = own


def test_fp16_vae_setting_switches_and_restores(fresh_webui, extension):
    shared.opts.data["ort_turbo_fp16_vae"] = False
    probe = VaeProbe()
    vae_job(extension, probe)
    assert probe.seen == (torch.float32, torch.float32)
    assert devices.dtype_vae == torch.float16 and shared.sd_model.first_stage_model.scale.dtype == torch.float16


def test_no_half_vae_wins(fresh_webui, extension):
    shared.cmd_opts.no_half_vae = True
    devices.dtype_vae = torch.float32
    shared.sd_model.first_stage_model.to(torch.float32)
    probe = VaeProbe()
    vae_job(extension, probe)
    assert probe.seen == (torch.float32, torch.float32) and devices.dtype_vae == torch.float32


def test_webui_nan_auto_revert_is_respected(fresh_webui, extension):
    devices.dtype_vae = torch.float32  # e.g. an earlier fp32 choice
    shared.sd_model.first_stage_model.to(torch.float32)
    vae_job(extension, VaeProbe(revert=True))
    assert devices.dtype_vae == torch.float32
    probe = VaeProbe()
    vae_job(extension, probe)
    assert probe.seen[0] == torch.float32  # not forced back to fp16 for the rest of the session


def test_stock_sdxl_vae_in_fp16_is_warned_about(fresh_webui, extension):
    shared.sd_model.is_sdxl = True
    try:
        p = job(extension, steps=1)
        run_job(p)
        assert any("stock SDXL VAE overflows in fp16" in c for c in p.comments)
    finally:
        shared.sd_model.is_sdxl = False


def test_paste_back_of_what_the_infotext_says(extension):
    import gradio as gr

    script = extension.OrtTurboScript()
    with gr.Blocks():
        script.ui(False)
    (component, parse), = script.infotext_fields
    assert parse({"ORT Turbo CFG-free": "True"}) is True and parse({"ORT Turbo CFG-free": "False"}) is False
    assert parse({}) is None  # an image that does not say leaves the checkbox alone
    assert script.paste_field_names == ["ORT Turbo CFG-free"]
