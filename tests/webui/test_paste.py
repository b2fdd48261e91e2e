"""An ORT Turbo image's infotext pasted back (PNG Info > Send to txt2img, the paste button): what it sets."""

from conftest import script_runner
from modules import shared
from modules.infotext_utils import create_override_settings_dict, get_override_settings, parse_generation_parameters
from modules.processing import StableDiffusionProcessing, run_job

from lib_ort.webui import job


def generate(extension, **kwargs):
    p = StableDiffusionProcessing(script_runner(extension, kwargs.pop("cfg_free", True)), **kwargs)
    return p, run_job(p)


def test_a_cfg_free_image_pastes_back_without_a_settings_override(fresh_webui, extension, sd2_model):
    assert "skip_early_cond" not in shared.opts.data  # a config where the user never set it
    _, turbo = generate(extension, batch_size=1, steps=2, cfg_scale=1.0, prompt="a cat", negative_prompt="dog")
    params = parse_generation_parameters(turbo.infotexts[0])
    assert params[job.INFOTEXT_CFG_FREE] == "True" and job.pasted_cfg_free(params) is True
    assert "Skip Early CFG" not in params
    overrides = [f"{name}: {value}" for name, _, value in get_override_settings(params)]
    assert overrides == []

    # the next generation at CFG 7 with a negative prompt, with whatever the paste put in Override settings
    sd2_model.rows_per_call.clear()
    generate(extension, batch_size=1, steps=2, cfg_scale=7.0, negative_prompt="blurry",
             override_settings=create_override_settings_dict(overrides))
    assert sd2_model.rows_per_call == [2, 2]  # the negative prompt's rows ran at every step
    assert "skip_early_cond" not in shared.opts.data


def test_the_webuis_own_skip_early_cfg_still_pastes_as_an_override(fresh_webui, extension, sd2_model):
    """The user's own setting (no ORT Turbo CFG-free) is recorded and pasted as the WebUI does it."""
    shared.opts.data["skip_early_cond"] = 0.5
    _, processed = generate(extension, cfg_free=False, steps=2, cfg_scale=7.0)
    params = parse_generation_parameters(processed.infotexts[0])
    assert params["Skip Early CFG"] == "0.5" and job.INFOTEXT_CFG_FREE not in params
    shared.opts.data.pop("skip_early_cond")
    assert get_override_settings(params) == [("Skip Early CFG", "skip_early_cond", 0.5)]
