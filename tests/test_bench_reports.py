"""The benchmark commands' outputs: the UNet matrix on a tiny model, and the WebUI end-to-end client
against a local stand-in server (the real one needs a running WebUI)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from lib_ort.cli import main
from lib_ort.bench.vae_architectures import build_vae
from test_profile import _conv_flops_by_hooks
from lib_ort.bench.report import markdown_table


def test_unet_matrix_writes_json_table_and_chart(shared_registry, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--root", str(shared_registry.root), "bench", "--arch", "tiny-sd2", "--matrix", "--height", "64",
                 "--width", "64", "--runs", "5", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    configs = {r["config"] for r in rows}
    assert configs == {"PyTorch eager", "ORT unfused", "ORT cpu recipe"}
    assert {(r["batch"], r["steps"]) for r in rows} == {(1, 1), (1, 4), (4, 1), (4, 4)}
    for r in rows:
        # both are rounded to 0.01 ms from the same median
        assert r["per_image_ms"] == pytest.approx(r["steps"] * r["call_ms"] / r["batch"], abs=0.006 * r["steps"] + 0.006)
        assert r["images_per_s"] == pytest.approx(1000 / r["per_image_ms"], rel=5e-3)
        lo, hi = r["spread_images_per_s"]
        assert lo <= r["images_per_s"] <= hi
        assert r["rel_err"] <= 1e-4
    assert result["meta"]["runs"] == 5 and result["meta"]["peak_rss_mb"] > 0
    assert (out / "unet-matrix-tiny-sd2-cpu.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "unet-matrix-tiny-sd2-cpu.md").read_text()
    assert "| (4,4) |" in table and "ORT cpu recipe" in table


def test_markdown_table_shows_gain_over_the_baseline():
    rows = [{"config": "A", "batch": 1, "steps": 1, "images_per_s": 2.0},
            {"config": "B", "batch": 1, "steps": 1, "images_per_s": 5.0},
            {"config": "B", "batch": 4, "steps": 1, "images_per_s": None, "error": "PyTorch ran: x"}]
    table = markdown_table(rows)
    assert "| (1,1) | 2 img/s | 5 img/s, 2.50× |" in table
    assert "| (4,1) | – | PyTorch ran: x |" in table


class FakeWebUI(BaseHTTPRequestHandler):
    """txt2img and options, with v1.10.1's rule: an overridden setting the user never set stays changed."""

    requests: list = []
    options = {"sd_unet": "Automatic"}  # what GET /sdapi/v1/options answers: defaults included
    user_set: set = set()  # the keys in the user's config.json

    def _answer(self, payload):
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer(dict(FakeWebUI.options))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeWebUI.requests.append((self.path, body))
        if self.path == "/sdapi/v1/options":
            FakeWebUI.options.update(body)
            FakeWebUI.user_set.update(body)
            return self._answer(None)
        for key, value in body["override_settings"].items():
            if key not in FakeWebUI.user_set:
                FakeWebUI.options[key] = value
        ours = body["override_settings"]["sd_unet"] == "ORT Turbo"
        text = "Steps: 1, ORT Turbo: abc-cpu-fp32 (cpu)" if ours else "Steps: 1"
        if ours and body["batch_size"] == 4:
            text = "Steps: 1, ORT Turbo: PyTorch fallback: batch 8 is outside"
        self._answer({"images": [], "info": json.dumps({"infotexts": [text]})})

    def log_message(self, *args):
        pass


def test_webui_bench_sends_the_blog_settings_and_reports_fallbacks(tmp_path, capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWebUI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["webui-bench", "--url", url, "--runs", "2", "--warmup", "1", "--out", str(tmp_path)]) == 0
    finally:
        server.shutdown()
    result = json.loads(capsys.readouterr().out)
    paths = [path for path, _ in FakeWebUI.requests]
    assert len(result["rows"]) == 12 and paths.count("/sdapi/v1/txt2img") == 12 * 3
    # the user's SD Unet is written back before the first override (so the WebUI undoes each one) and after
    assert paths[0] == paths[-1] == "/sdapi/v1/options" and FakeWebUI.requests[0][1] == {"sd_unet": "Automatic"}
    assert FakeWebUI.options["sd_unet"] == "Automatic" and result["meta"]["users_sd_unet"] == "Automatic"
    first = FakeWebUI.requests[1][1]
    assert (first["cfg_scale"], first["sampler_name"], first["scheduler"], first["width"]) == (1.0, "Euler a",
                                                                                            "SGM Uniform", 512)
    assert first["alwayson_scripts"] == {"ort turbo": {"args": [False]}}
    ort = [r for r in result["rows"] if r["config"] == "ORT Turbo"]
    assert all(r["images_per_s"] for r in ort if r["batch"] == 1)
    assert all(r["error"].startswith("PyTorch ran: batch 8") for r in ort if r["batch"] == 4)
    assert (tmp_path / "webui-e2e.png").exists() and (tmp_path / "webui-e2e.md").exists()


def test_webui_bench_says_when_no_webui_is_there(tmp_path, capsys):
    assert main(["webui-bench", "--url", "http://127.0.0.1:9", "--runs", "1", "--warmup", "0", "--batches", "1",
                 "--steps", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert all("cannot reach the WebUI" in r["error"] for r in rows)


def test_vae_bench_times_torch_raw_export_and_recipe_on_the_same_latents(shared_registry, capsys):
    assert main(["--root", str(shared_registry.root), "bench-vae", "--vae", "tiny-ldm", "--height", "48", "--width",
                 "64", "--batch", "2", "--runs", "3", "--profile", "--encode"]) == 0
    result = json.loads(capsys.readouterr().out)
    decode = result["decode"]
    assert list(decode) == ["PyTorch eager", "ORT raw export", "ORT cpu recipe"]
    for name, c in decode.items():
        lo, hi = c["spread_ms"]
        assert 0 < lo <= c["median_ms"] <= hi
        assert c["speedup"] == pytest.approx(decode["PyTorch eager"]["median_ms"] / c["median_ms"], rel=0.02)
        assert c["max_pixel_diff"] <= 1  # fp32 everywhere: at most one rounding step of 255
    # the decoder's convolutions, counted from ORT's node shapes, are what the PyTorch modules compute
    class Decode(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, z):
            return self.vae.decode(z)

    conv = _conv_flops_by_hooks(Decode(build_vae("tiny-ldm", seed=0)), {"z": torch.randn(2, 4, 6, 8)})
    profile = result["profile"]
    assert profile["gflop"]["convolution"] == pytest.approx(conv / 1e9, rel=0.05)
    assert profile["floor_ms"] > 0 and profile["max_speedup_over_eager"] > 0
    encode = result["encode"]  # the encoder on the same images: PyTorch, then the recipe's encoder
    assert list(encode) == ["PyTorch eager", "ORT cpu recipe"]
    assert encode["ORT cpu recipe"]["rel_err"] <= 1e-4 and encode["PyTorch eager"]["rel_err"] == 0
    for c in encode.values():
        assert 0 < c["spread_ms"][0] <= c["median_ms"] <= c["spread_ms"][1]
        assert c["speedup"] == pytest.approx(encode["PyTorch eager"]["median_ms"] / c["median_ms"], rel=0.02)
    listed = {row.id: row.manifest for row in shared_registry.list()}
    assert listed[result["artefact"]]["kind"] == "vae"  # the recipe's artefact is kept


def test_vae_bench_refuses_sizes_the_vae_cannot_decode(shared_registry, capsys):
    assert main(["--root", str(shared_registry.root), "bench-vae", "--vae", "tiny-ldm", "--height", "50"]) == 1
    assert "multiples of 8" in capsys.readouterr().err


def test_configurations_are_timed_interleaved_in_a_rotating_order():
    from lib_ort.bench.timing import time_interleaved

    calls = []
    timings = time_interleaved({name: (lambda name=name: calls.append(name)) for name in "abc"}, runs=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one further on
    assert all(len(t["samples_ms"]) == 3 and t["min_ms"] <= t["median_ms"] <= t["max_ms"] for t in timings.values())


def test_matrix_with_torch_compile_adds_a_column_or_says_why_not(shared_registry, tmp_path, capsys):
    assert main(["--root", str(shared_registry.root), "bench", "--arch", "tiny-sd1", "--matrix", "--compile",
                 "--height", "64", "--width", "64", "--batches", "1", "--steps", "1", "--runs", "2",
                 "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    compiled = [r for r in result["rows"] if r["config"] == "torch.compile"]
    if compiled:  # inductor needs a C++ compiler; where it works, it computes what eager computes
        assert compiled[0]["rel_err"] <= 1e-4 and compiled[0]["compile_s"] > 0
    else:
        assert "torch.compile" in result["meta"]["notes"]
    assert {r["config"] for r in result["rows"]} >= {"PyTorch eager", "ORT unfused", "ORT cpu recipe"}
