"""``webui-bench``: the end-to-end client, against a local stand-in of the WebUI's API (the real one needs a
running WebUI)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lib_ort.cli import main


class FakeWebUI(BaseHTTPRequestHandler):
    """txt2img and options, with v1.10.1's rule: an overridden setting the user never set stays changed."""

    requests: list = []
    # what GET /sdapi/v1/options answers: defaults included
    options = {"sd_unet": "Automatic", "cross_attention_optimization": "Automatic"}
    applied = ["Automatic"]  # the attention the model runs: changed only by the options endpoint's callback
    user_set: set = set()  # the keys in the user's config.json

    def _answer(self, payload):
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer(dict(type(self).options))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeWebUI.requests.append((self.path, body))
        if self.path == "/sdapi/v1/options":
            FakeWebUI.options.update(body)
            FakeWebUI.user_set.update(body)
            if "cross_attention_optimization" in body:  # its onchange callback redoes the hijack
                FakeWebUI.applied.append(body["cross_attention_optimization"])
            return self._answer(None)
        for key, value in body["override_settings"].items():  # run_callbacks=False: nothing re-applied
            if key not in FakeWebUI.user_set:
                FakeWebUI.options[key] = value
        body["_attention"] = FakeWebUI.applied[-1]
        if body["override_settings"]["sd_unet"] == "None" and FakeWebUI.applied[-1] == "InvokeAI":
            time.sleep(0.03)  # InvokeAI slower than SDP on this "machine"
        ours = body["override_settings"]["sd_unet"] == "ORT Turbo"
        text = "Steps: 1, ORT Turbo: abc-cpu-fp32 (CPU)" if ours else "Steps: 1"
        if ours and body["batch_size"] == 4:
            # the WebUI quotes a value with a colon or comma (infotext_utils.quote)
            text = 'Steps: 1, ORT Turbo: "PyTorch fallback: batch 8 is outside 1-4, for this artefact", Seed: 1'
        if ours and body["batch_size"] == 1 and body["steps"] == 4:
            text = 'Steps: 4, ORT Turbo: "partly PyTorch: an ONNX Runtime error", ORT Turbo CFG-free: True'
        self._answer({"images": [], "info": json.dumps({"infotexts": [text]})})

    def log_message(self, *args):
        pass


def run_against(handler, *args) -> int:
    """``webui-bench`` with ``args`` against a fake WebUI served by ``handler`` on a free local port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return main(["webui-bench", "--url", f"http://127.0.0.1:{server.server_address[1]}", *args])
    finally:
        server.shutdown()


def test_webui_bench_sends_the_blog_settings_and_reports_fallbacks(tmp_path, capsys):
    assert run_against(FakeWebUI, "--runs", "2", "--warmup", "1", "--out", str(tmp_path)) == 0
    result = json.loads(capsys.readouterr().out)
    paths = [path for path, _ in FakeWebUI.requests]
    # stock and CFG-free under each of the two attention optimizations, ORT Turbo once; 4 cells each
    assert len(result["rows"]) == 5 * 4 and paths.count("/sdapi/v1/txt2img") == 5 * 4 * 3
    # the user's SD Unet is written back before the first override (so the WebUI undoes each one) and after
    assert paths[0] == paths[-1] == "/sdapi/v1/options" and FakeWebUI.requests[0][1] == {"sd_unet": "Automatic"}
    assert FakeWebUI.options["sd_unet"] == "Automatic" and result["meta"]["users_sd_unet"] == "Automatic"
    # each PyTorch row ran under the optimization its label names (set through the options endpoint)
    txt2img = [body for path, body in FakeWebUI.requests if path == "/sdapi/v1/txt2img"]
    assert [r["config"] for r in result["rows"][::4]] == [
        "WebUI stock (InvokeAI)", "WebUI + CFG-free (InvokeAI)", "WebUI stock (sdp - scaled dot product)",
        "WebUI + CFG-free (sdp - scaled dot product)", "ORT Turbo"]
    assert [b["_attention"] for b in txt2img[:24]] == ["InvokeAI"] * 24
    assert [b["_attention"] for b in txt2img[24:48]] == ["sdp - scaled dot product"] * 24
    assert [b["_attention"] for b in txt2img[48:]] == ["Automatic"] * 12  # ORT Turbo: the user's own setting
    # the user's setting is back, and the gains are over the faster stock row, named
    assert FakeWebUI.options["cross_attention_optimization"] == FakeWebUI.applied[-1] == "Automatic"
    assert result["meta"]["baseline"] == "WebUI stock (sdp - scaled dot product)"
    assert "WebUI stock (sdp - scaled dot product) (baseline)" in (tmp_path / "webui-e2e.md").read_text()
    first = txt2img[0]
    assert (first["cfg_scale"], first["sampler_name"], first["scheduler"], first["width"]) == (1.0, "Euler a",
                                                                                            "SGM Uniform", 512)
    assert first["alwayson_scripts"] == {"ort turbo": {"args": [False]}}
    ort = [r for r in result["rows"] if r["config"] == "ORT Turbo"]
    assert all(r["images_per_s"] for r in ort if r["batch"] == 1 and r["steps"] == 1)
    assert all(r["error"] == "PyTorch ran: batch 8 is outside 1-4, for this artefact" for r in ort if r["batch"] == 4)
    assert all(r["error"] == "PyTorch ran: an ONNX Runtime error" for r in ort if r["batch"] == 1 and r["steps"] == 4)
    assert (tmp_path / "webui-e2e.png").exists() and (tmp_path / "webui-e2e.md").exists()


def test_webui_bench_says_when_no_webui_is_there(tmp_path, capsys):
    assert main(["webui-bench", "--url", "http://127.0.0.1:9", "--runs", "1", "--warmup", "0", "--batches", "1",
                 "--steps", "1", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert all("cannot reach the WebUI" in r["error"] for r in result["rows"])
    assert result["meta"]["baseline"] is None


class FakeWebUIWithProviders(FakeWebUI):
    """The same WebUI with ORT Turbo's provider setting, serving the wrong provider for each one asked for
    (as a WebUI whose setting did not take would): its infotext says which ran."""

    requests: list = []
    options = {"sd_unet": "Automatic", "cross_attention_optimization": "Automatic", "ort_turbo_provider": "Automatic"}
    applied = ["Automatic"]
    user_set: set = set()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if self.path == "/sdapi/v1/options":
            type(self).options.update(body)
            return self._answer(None)
        ours = body["override_settings"]["sd_unet"] == "ORT Turbo"
        # asked for the CPU, it runs OpenVINO; asked for OpenVINO, it runs the CPU (neither may count)
        served = {"CPU": '"abc-openvino-fp32 (OpenVINO (CPU), bf16)"', "Automatic": "abc-cpu-fp32 (CPU)"}
        ran = served.get(type(self).options["ort_turbo_provider"], "abc-cpu-fp32 (CPU)")
        text = f"Steps: 1, ORT Turbo: {ran}" if ours else "Steps: 1"
        body["_provider"] = type(self).options["ort_turbo_provider"]
        self._answer({"images": [], "info": json.dumps({"infotexts": [text]})})


def test_webui_bench_times_ort_turbo_once_per_provider_and_catches_the_wrong_one(tmp_path, capsys):
    assert run_against(FakeWebUIWithProviders, "--runs", "1", "--warmup", "0", "--batches", "1", "--steps", "1",
                       "--attention", "InvokeAI", "--providers", "CPU", "OpenVINO (CPU)", "--out", str(tmp_path)) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["config"]: r for r in result["rows"]}
    assert list(rows) == ["WebUI stock (InvokeAI)", "WebUI + CFG-free (InvokeAI)", "ORT Turbo (CPU)",
                          "ORT Turbo (OpenVINO (CPU))"]
    # OpenVINO served the CPU row, the CPU the OpenVINO row: neither counts as what it was asked for
    assert rows["ORT Turbo (CPU)"]["images_per_s"] is None
    assert rows["ORT Turbo (CPU)"]["error"] == "another provider ran: abc-openvino-fp32 (OpenVINO (CPU), bf16)"
    assert rows["ORT Turbo (OpenVINO (CPU))"]["images_per_s"] is None
    assert rows["ORT Turbo (OpenVINO (CPU))"]["error"] == "another provider ran: abc-cpu-fp32 (CPU)"
    txt2img = [body for path, body in FakeWebUIWithProviders.requests if path == "/sdapi/v1/txt2img"]
    # the stock rows run under the user's provider setting, each ORT Turbo row under its own
    assert [b["_provider"] for b in txt2img] == ["Automatic", "Automatic", "CPU", "OpenVINO (CPU)"]
    # the user's values are back at the end
    assert FakeWebUIWithProviders.options == {"sd_unet": "Automatic", "cross_attention_optimization": "Automatic",
                                              "ort_turbo_provider": "Automatic"}
    assert result["meta"]["users_provider"] == "Automatic"


def test_an_infotext_names_the_provider_that_served_the_row():
    from lib_ort.bench.webui import _served_by

    assert _served_by("abc-cpu-fp32 (CPU)", "CPU")
    assert _served_by('"abc-openvino-fp32 (OpenVINO (CPU), bf16)"', "OpenVINO (CPU)")
    assert not _served_by('"abc-openvino-fp32 (OpenVINO (CPU), bf16)"', "CPU")
    assert not _served_by("abc-cpu-fp32 (CPU)", "OpenVINO (CPU)")


def test_the_charts_legend_covers_no_bar_and_no_gain_label():
    """With five configurations (webui-bench's) and one bar far taller than the rest, the legend used to sit on
    the tallest bar's gain label. Drawn for real: no legend box overlaps a bar or a label, and every label
    stays inside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from matplotlib.text import Annotation

    from lib_ort.bench.report import draw_bar_chart

    configs = ["WebUI stock (InvokeAI)", "WebUI + CFG-free (InvokeAI)", "WebUI stock (sdp - scaled dot product)",
               "WebUI + CFG-free (sdp - scaled dot product)", "ORT Turbo"]
    rows = [{"config": c, "batch": b, "steps": s, "images_per_s": (5.0 if c == "ORT Turbo" else 1.0 + 0.1 * i) / s}
            for i, c in enumerate(configs) for b in (1, 4) for s in (1, 4)]
    fig = draw_bar_chart(rows, "txt2img 512x512", baseline=configs[2])
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent(renderer)
        labels = [t.get_window_extent(renderer) for t in ax.texts if isinstance(t, Annotation)]
        bars = [p.get_window_extent(renderer) for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]
        assert len(labels) == 16 and len(bars) == 20
        assert not any(legend.overlaps(box) for box in labels + bars)
        inside = ax.get_window_extent(renderer)
        assert all(inside.y0 <= box.y0 and box.y1 <= inside.y1 for box in labels)
    finally:
        plt.close(fig)
