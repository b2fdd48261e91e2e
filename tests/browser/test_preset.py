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
