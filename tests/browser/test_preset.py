"""Finding 1 of issue 12: "Apply Turbo preset" must set what the next Generate uses, not only what the boxes show."""

import pytest


@pytest.mark.parametrize("tabname", ["txt2img", "img2img"])
def test_the_turbo_preset_is_what_generate_sends(page, tabname):
    page.tab(tabname)
    before = page.generate(tabname)
    assert (before["sampler_name"], before["scheduler"], before["steps"]) == ("DPM++ 2M", "Automatic", 20)

    page.open_accordion(f"ort_turbo_{tabname}")
    page.choose_radio(f"ort_turbo_{tabname}_steps", "2")
    page.click(f"#ort_turbo_{tabname}_preset")
    page.wait(lambda: page.js(f"return document.querySelector('#{tabname}_steps input[type=number]').value") == "2",
              "the preset's update to reach the page")
    job = page.generate(tabname)

    assert (job["steps"], job["cfg_scale"], job["sampler_name"], job["scheduler"]) == (2, 1.0, "Euler a", "SGM Uniform")
    assert "Steps: 2, Sampler: Euler a, Schedule type: SGM Uniform, CFG scale: 1.0" in job["infotext"]
    assert job["script_args"] == [True] and job["rows_per_call"] == [1, 1]  # CFG-free at CFG 1


def test_the_extension_javascript_loads_and_its_tooltips_name_real_controls(page):
    """javascript/ort_turbo.js runs in the page; each tooltip it adds is keyed by a text the page shows."""
    page.open_accordion("ort_turbo_txt2img")
    keys = page.js("return Object.keys(titles)")
    assert "Apply Turbo preset" in keys
    texts = page.js("return document.querySelector('gradio-app').textContent")  # all tabs, no scripts
    missing = [key for key in keys if key not in texts]
    assert not missing, missing
