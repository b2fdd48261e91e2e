"""Finding 2 of issue 12: pasting a CFG-free image's parameters must not bring skip_early_cond back as an override."""


def test_paste_then_cfg_7_uses_the_negative_prompt_and_leaves_the_settings_alone(page):
    from modules import shared

    assert "skip_early_cond" not in shared.opts.data  # a config where the user never set it
    page.open_accordion("ort_turbo_txt2img")
    page.click("#ort_turbo_txt2img_preset")
    page.wait(lambda: page.js("return document.querySelector('#txt2img_cfg_scale input[type=number]').value") == "1",
              "CFG scale 1 from the preset")
    turbo = page.generate("txt2img")
    assert turbo["rows_per_call"] == [1] and "ORT Turbo CFG-free: True" in turbo["infotext"]

    # the image's parameters pasted back (the prompt box and the paste button, as from PNG Info)
    page.type_into("#txt2img_prompt", turbo["infotext"])
    page.click("#txt2img_paste")
    page.wait(lambda: page.js("return document.querySelector('#txt2img_steps input[type=number]').value") == "1",
              "the pasted values")
    # then a CFG-7 image with a negative prompt
    page.type_into("#txt2img_cfg_scale", "7")
    page.type_into("#txt2img_neg_prompt", "blurry, watermark")
    job = page.generate("txt2img")

    assert job["cfg_scale"] == 7.0 and job["negative_prompt"] == "blurry, watermark"
    assert job["override_settings"] == {}
    assert job["rows_per_call"] == [2]  # the negative prompt's row ran
    assert "skip_early_cond" not in job["opts_after"]
    assert "skip_early_cond" not in shared.opts.data
    assert job["script_args"] == [True]  # the accordion's CFG-free came back from the paste


def test_the_vae_note_pastes_back_cleanly(page):
    """What ran is in the infotext in a few words; the advice is under the image."""
    from modules import shared

    from lib_ort.webui.unet import LABEL

    shared.opts.data["sd_unet"] = LABEL  # no export exists: the UNet and the VAE run in PyTorch
    job = page.generate("txt2img")
    assert "ORT Turbo VAE: PyTorch (no artefact)," in job["infotext"] + ","
    comments = page.el("#comments_txt2img textarea").get_property("value")
    assert "export the VAE in the ORT Turbo tab" in comments
    page.type_into("#txt2img_prompt", job["infotext"])
    page.click("#txt2img_paste")
    pasted = page.wait(lambda: page.webui.received.pasted, "the paste")[-1]
    assert pasted["ORT Turbo VAE"] == "PyTorch (no artefact)" and pasted["Steps"] == "20"
