"""``bench`` and ``bench --matrix``: one UNet call, the WebUI's PyTorch paths against the recipe, and the blog's grid."""

import json

import pytest

from lib_ort.bench.unet import matrix_rows
from lib_ort.cli import main


def test_matrix_rows_derive_per_image_time_and_images_per_second_from_the_call_time():
    """4 rows per call at 200 ms (160..250): 1 step = 50 ms an image, 20 img/s; 4 steps = 200 ms, 5 img/s."""
    timing = {"median_ms": 200.0, "min_ms": 160.0, "max_ms": 250.0}
    one, four = matrix_rows("ORT cpu recipe", 4, [1, 4], timing, {"rel_err": 0.0})
    assert (one["steps"], one["per_image_ms"], one["images_per_s"]) == (1, 50.0, 20.0)
    assert one["spread_images_per_s"] == [16.0, 25.0]  # the slowest call (250 ms) and the fastest (160 ms)
    assert (four["steps"], four["per_image_ms"], four["images_per_s"]) == (4, 200.0, 5.0)
    assert four["spread_images_per_s"] == [4.0, 6.25]
    assert one["call_ms"] == four["call_ms"] == 200.0 and one["call_spread_ms"] == [160.0, 250.0]
    assert one["config"] == "ORT cpu recipe" and one["batch"] == 4 and one["rel_err"] == 0.0


def test_unet_matrix_writes_json_table_and_chart(shared_registry, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--root", str(shared_registry.root), "bench", "--arch", "tiny-sd2", "--matrix", "--height", "64",
                 "--width", "64", "--runs", "5", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    configs = {r["config"] for r in rows}
    assert configs == {"PyTorch eager", "PyTorch SDPA", "PyTorch InvokeAI", "ORT unfused", "ORT cpu recipe"}
    assert {(r["batch"], r["steps"]) for r in rows} == {(1, 1), (1, 4), (4, 1), (4, 4)}
    for r in rows:
        lo, hi = r["spread_images_per_s"]
        assert lo <= r["images_per_s"] <= hi
        assert r["rel_err"] <= 1e-4
    assert result["meta"]["runs"] == 5 and result["meta"]["peak_rss_mb"] > 0
    assert (out / "unet-matrix-tiny-sd2-cpu.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "unet-matrix-tiny-sd2-cpu.md").read_text()
    assert "| (4,4) |" in table and "ORT cpu recipe" in table
    # gains are over the WebUI path with the least UNet time in the grid, named in the table
    per_image = {c: sum(r["per_image_ms"] for r in rows if r["config"] == c) for c in ("PyTorch SDPA", "PyTorch InvokeAI")}
    baseline = result["meta"]["baseline"]
    assert baseline == min(per_image, key=per_image.get) and f"{baseline} (baseline)" in table


@pytest.mark.parametrize("order", [[], ["--interleave"]], ids=["pytorch-first", "interleaved"])
def test_bench_reports_its_speedup_over_the_faster_webui_path_and_names_it(shared_registry, capsys, order):
    assert main(["--root", str(shared_registry.root), "bench", "--arch", "tiny-sd1", "--runs", "3", "--json",
                 *order]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["interleaved"] is bool(order)
    pytorch = result["pytorch"]
    assert list(pytorch) == ["PyTorch eager", "PyTorch SDPA", "PyTorch InvokeAI"]
    assert all(p["rel_err"] <= 1e-4 for p in pytorch.values())
    webui = {c: pytorch[c]["median_ms"] for c in ("PyTorch SDPA", "PyTorch InvokeAI")}
    assert result["baseline"] == min(webui, key=webui.get)
    assert result["torch_ms"] == webui[result["baseline"]]
    assert result["speedup"] == pytest.approx(result["torch_ms"] / result["ort_ms"], rel=0.01)
    assert result["speedup_over_eager"] == pytest.approx(pytorch["PyTorch eager"]["median_ms"] / result["ort_ms"],
                                                         rel=0.01)


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
