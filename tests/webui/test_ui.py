"""How the accordion and the tab attach to the WebUI's page (the browser tests in tests/browser run them)."""

import gradio as gr
import pytest

from lib_ort.webui import ui


def _dependencies(blocks, trigger):
    return [d for d in blocks.config["dependencies"] if d["trigger"] == trigger]


@pytest.mark.parametrize("accordion_first", [False, True])
def test_the_preset_button_is_wired_to_the_four_controls_in_either_page_order(accordion_first):
    preset = ui.TurboPreset("img2img")
    with gr.Blocks() as page:
        if accordion_first:  # a user's ui_reorder_list can put the scripts above the sampler
            ui.build_accordion(True, preset)
        targets = [gr.Slider(elem_id="img2img_steps"), gr.Slider(elem_id="img2img_cfg_scale"),
                   gr.Dropdown(["Euler a"], elem_id="img2img_sampling"), gr.Slider(elem_id="txt2img_steps"),
                   gr.Dropdown(["SGM Uniform"], elem_id="img2img_scheduler")]
        for component in targets:
            preset.saw(component)
        if not accordion_first:
            ui.build_accordion(True, preset)
    [click] = _dependencies(page, "click")
    wanted = [targets[i]._id for i in (0, 1, 2, 4)]  # never the other tab's steps
    assert click["outputs"] == wanted and click["targets"] == [preset.button._id]


def test_preset_values_clamp_the_steps_and_never_pick_a_one_step_breaker():
    steps, cfg, sampler, scheduler = ui.preset_values("9")
    assert steps["value"] == 4 and cfg["value"] == 1.0
    assert (sampler["value"], scheduler["value"]) == ("Euler a", "SGM Uniform")
    assert ui.preset_values(None)[0]["value"] == 1 and ui.preset_values("0")[0]["value"] == 1


def test_selecting_the_tab_refreshes_the_table(extension):
    tab = ui.build_tab()
    with gr.Blocks() as page:
        with gr.Tabs():
            item = gr.TabItem("ORT Turbo", id="ort_turbo", elem_id="tab_ort_turbo")
            ui.refresh_when_shown(item, elem_id="tab_ort_turbo")  # reported from inside its constructor
            with item:
                tab.render()
            ui.refresh_when_shown(gr.HTML(elem_id="footer"), elem_id="footer")
    [select] = _dependencies(page, "select")
    assert select["targets"] == [item._id] and select["outputs"] == [c._id for c in ui._tab_outputs]
    assert len(_dependencies(page, "load")) >= 1  # and every page load
