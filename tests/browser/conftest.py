"""Browser tests: headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) against
the WebUI-shaped Gradio 3.41.2 page in webui_page.py, served from this process, with ORT Turbo's real
script, tab, settings and JavaScript. Assertions are on what the server receives.

Run in the WebUI-like environment (.venv-webui); ``make test-browser`` installs what is missing.
Without Chromium these tests fail (they never skip): a UI nobody tested in a browser is the bug
they exist for.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "webui_stub"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

WIDTH, HEIGHT = 1280, 1000
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", f"--window-size={WIDTH},{HEIGHT}"]


def _find(names, env):
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    pytest.fail(f"{names[0]} not found (set ${env}, or run `make test-browser`, which installs the Debian "
                f"packages chromium and chromium-driver)", pytrace=False)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inject_head(head: str) -> None:
    """Put extension JavaScript into every page Gradio serves, as the WebUI does with javascript/*.js."""
    import gradio.routes

    original = gradio.routes.templates.TemplateResponse
    if getattr(original, "ort_turbo_harness", False):
        return

    def response(*args, **kwargs):
        res = original(*args, **kwargs)
        res.body = res.body.replace(b"</head>", f"{head}</head>".encode())
        res.init_headers()
        return res

    response.ort_turbo_harness = True
    gradio.routes.templates.TemplateResponse = response


@pytest.fixture(scope="session")
def webui(tmp_path_factory):
    """The page served on localhost, with ORT Turbo loaded and a tiny SD2 checkpoint as the loaded model."""
    os.environ["ORT_TURBO_HOME"] = str(tmp_path_factory.mktemp("artefacts"))
    os.environ["ORT_TURBO_DATA"] = str(tmp_path_factory.mktemp("ort-turbo-data"))
    from modules import sd_models, sd_unet, shared

    shared.data_path = str(tmp_path_factory.mktemp("webui-data"))
    fixtures = _load("webui_fixtures", REPO / "tests" / "webui" / "conftest.py")
    extension = _load("ort_turbo", REPO / "scripts" / "ort_turbo.py")
    model = fixtures.StubSdModel("tiny-sd2", "models/Stable-diffusion/turbo/tiny-sd2.safetensors")
    shared.sd_model = model
    sd_models.checkpoints_list[model.sd_checkpoint_info.title] = model.sd_checkpoint_info
    sd_unet.list_unets()

    page = _load("webui_page", Path(__file__).with_name("webui_page.py"))
    received = page.Received()
    scripts = {"txt2img": extension.OrtTurboScript(), "img2img": extension.OrtTurboScript()}
    demo = page.build_page(received, scripts, settings_section="ort_turbo")
    _inject_head(page.extension_head())
    port = _free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        show_api=False)
    yield type("Webui", (), {"url": f"http://127.0.0.1:{port}/", "received": received, "model": model,
                             "extension": extension, "scripts": scripts})
    closing = threading.Thread(target=demo.close, daemon=True)
    closing.start()
    closing.join(30)  # a connection left open must not hang the run; the process exit ends the server


@pytest.fixture(scope="session")
def browser(webui):
    """Depends on ``webui`` so it closes first: uvicorn's shutdown waits for the page's open connections."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _find(["chromium", "chromium-browser", "/usr/lib/chromium/chromium"],
                                    "ORT_TURBO_CHROMIUM")
    profile = tempfile.mkdtemp(prefix="ort-turbo-chromium-")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(
        _find(["chromedriver", "/usr/lib/chromium/chromedriver"], "ORT_TURBO_CHROMEDRIVER")))
    driver.set_window_size(WIDTH, HEIGHT)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The loaded page, with the few gestures the tests need."""

    def __init__(self, driver, webui):
        self.driver, self.webui = driver, webui

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def el(self, css, timeout=20):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    def wait(self, condition, what: str, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = condition()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def click(self, css):
        element = self.el(css)
        self.js("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()

    def tab(self, label):
        """Select a top-level tab by its button's text."""
        from selenium.webdriver.common.by import By

        buttons = self.el("#tabs").find_elements(By.CSS_SELECTOR, ".tab-nav button")
        [button] = [b for b in buttons if b.text.strip() == label]
        button.click()

    def open_accordion(self, elem_id):
        if not self.js(f"return !!document.querySelector('#{elem_id} .open')"):
            self.click(f"#{elem_id} > .label-wrap")

    def choose_radio(self, elem_id, value):
        self.click(f"#{elem_id} input[value='{value}']")

    def type_into(self, css, text):
        from selenium.webdriver.common.keys import Keys

        box = self.el(f"{css} textarea, {css} input")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)
        box.send_keys(Keys.TAB)

    def generate(self, tabname):
        jobs = self.webui.received.jobs
        before = len(jobs)
        self.click(f"#{tabname}_generate")
        self.wait(lambda: len(jobs) > before, "the server to receive Generate")
        self.wait(lambda: jobs[-1]["infotext"] in (self.el(f"#generation_info_{tabname} textarea")
                                                   .get_property("value") or ""), "the infotext on the page")
        return jobs[-1]


@pytest.fixture()
def page(browser, webui):
    """A fresh page load, from a config where the user set nothing."""
    from modules import shared

    shared.opts.data.clear()
    webui.received.jobs.clear()
    webui.received.pasted.clear()
    browser.get(webui.url)
    p = Page(browser, webui)
    p.el("#txt2img_generate", timeout=60)
    return p


@pytest.fixture()
def screenshots():
    """Where the README's screenshots go: $ORT_TURBO_SCREENSHOTS (e.g. docs/img), or nowhere."""
    folder = os.environ.get("ORT_TURBO_SCREENSHOTS")
    return Path(folder) if folder else None
