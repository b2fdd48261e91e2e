"""Finding 3 of issue 12: the ORT Turbo tab is current without Refresh, readable at 1280 px; the layout is clean."""

import io

from lib_ort.webui import service

TABLE_TEXT = "return document.querySelector('#ort_turbo_artefacts').textContent"


def export_made_elsewhere(model, ep="cpu", precision="fp32"):
    """An artefact committed to the registry as the API, the command line or another page would."""
    reg = service.registry()
    work = reg.new_work_folder("browser-test")
    (work / "model.onnx").write_bytes(b"\0" * 4096)
    info = model.sd_checkpoint_info
    artefact = reg.commit(work, {"model_file": "model.onnx", "ep": ep, "precision": precision, "family": "sd2",
                                 "checkpoint": {"hash": info.sha256, "name": "tiny-sd2"}})
    service.artefacts_changed()
    return artefact


def test_an_export_made_elsewhere_shows_when_the_tab_is_shown(page, webui):
    page.tab("ORT Turbo")
    page.wait(lambda: "No" not in (page.js(TABLE_TEXT) or "No"), "the tab's table")
    artefact = export_made_elsewhere(webui.model)
    try:
        page.tab("txt2img")
        page.tab("ORT Turbo")  # no Refresh pressed
        title = webui.model.sd_checkpoint_info.title
        page.wait(lambda: artefact.id in page.js(TABLE_TEXT), "the new export in the table")
        # named by the WebUI's checkpoint title, not the name the other tool wrote
        assert title in page.js(TABLE_TEXT) and "tiny-sd2," not in page.js(TABLE_TEXT)
        # the delete dropdown knows it too: choosing it and pressing Delete deletes it on the server
        page.click("#ort_turbo_delete_choice input")
        page.click(f"#ort_turbo_delete_choice li[data-value='{artefact.id}']")
        page.click("#ort_turbo_delete")
        page.wait(lambda: not artefact.folder.exists(), "the server to delete the export")
    finally:
        if artefact.folder.exists():
            service.registry().delete(artefact.id)


def test_a_page_load_reads_the_registry(page, webui, browser):
    artefact = export_made_elsewhere(webui.model, precision="fp16")
    try:
        browser.refresh()
        page.el("#txt2img_generate", timeout=60)
        page.wait(lambda: artefact.id in (page.js(TABLE_TEXT) or ""), "the export in the table after a page load")
    finally:
        service.registry().delete(artefact.id)


def test_the_columns_a_user_needs_fit_in_1280_px(page, webui, screenshots):
    artefact = export_made_elsewhere(webui.model)
    broken = export_made_elsewhere(webui.model, precision="fp16")
    (broken.folder / "model.onnx").write_bytes(b"\0" * 10)  # its row says why it is not valid, at length
    try:
        page.tab("ORT Turbo")
        page.click("#ort_turbo_refresh")  # this test is about the layout alone
        page.wait(lambda: artefact.id in page.js(TABLE_TEXT), "the table")
        layout = page.js("""
            const table = document.querySelector('#ort_turbo_artefacts');
            const heads = [...table.querySelectorAll('thead th')].map(th => [th.textContent.trim(),
                                                                             th.getBoundingClientRect().right]);
            const scroller = [...table.querySelectorAll('*')].find(e => e.scrollWidth > e.clientWidth + 1
                && getComputedStyle(e).overflowX !== 'visible');
            return {heads, viewport: document.documentElement.clientWidth, scrolls: scroller ? scroller.className : null};
        """)
        visible = {name: right <= layout["viewport"] for name, right in layout["heads"]}
        for column in ("checkpoint", "provider", "precision", "MB", "valid", "why not"):
            assert visible.get(column), (column, layout)
        assert layout["scrolls"] is None, layout
        assert "truncated or replaced" in page.js(TABLE_TEXT)
        save(page, "#tab_ort_turbo", screenshots, "tab.png")
    finally:
        service.registry().delete(artefact.id)
        service.registry().delete(broken.id)


def test_the_folder_setting_is_one_line(page, screenshots):
    page.tab("Settings")
    field = page.el("#setting_ort_turbo_artefact_dir")
    assert page.js("return arguments[0].querySelectorAll('textarea').length", field) == 0
    assert page.js("return arguments[0].querySelectorAll('input[type=text]').length", field) == 1
    save(page, "#tab_settings", screenshots, "settings.png")


def test_the_accordion_lays_out_on_one_line_per_control(page, screenshots):
    for tabname in ("txt2img", "img2img"):
        page.tab(tabname)
        page.open_accordion(f"ort_turbo_{tabname}")
        tops = page.wait(lambda: page.js(f"""
            const labels = [...document.querySelectorAll('#ort_turbo_{tabname}_steps label')]
                .filter(l => l.querySelector('input')).map(l => Math.round(l.getBoundingClientRect().top));
            return labels.length === 4 && labels;"""), "the radio's choices")
        assert len(set(tops)) == 1, tops  # "Turbo steps" 1 2 3 4 on one line
    page.tab("txt2img")
    save(page, "#ort_turbo_txt2img", screenshots, "accordion.png")


def save(page, css, folder, name):
    """An element's screenshot for the README, as a small palette PNG (only with $ORT_TURBO_SCREENSHOTS)."""
    if folder is None:
        return
    from PIL import Image

    element = page.el(css)
    page.js("arguments[0].scrollIntoView({block: 'start'})", element)
    image = Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(folder / name, optimize=True)
