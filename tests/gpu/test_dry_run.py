"""The GPU check's CPU dry run (CI): the same scripts, the CPU provider standing in, tiny sizes."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import device_check  # noqa: E402
import fullsize  # noqa: E402
import make_device_data  # noqa: E402
import report  # noqa: E402


def test_gpu_check_dry_run_runs_every_step_in_order_and_writes_a_report(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    info = make_device_data.main([str(data), "--ep", "cpu", "--size", "tiny", "--families", "sdxl"])
    assert info["io_types"]["sample"] == "FLOAT"
    code = device_check.main([str(data), str(out), "--dry-run"])
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    status = {r["name"]: r["status"] for r in lines}
    assert [r["step"] for r in lines] == sorted(device_check.STEPS)
    assert status == {"versions": "ok", "session": "ok", "race": "ok", "fractional_t": "ok",
                      "first_vs_steady": "ok", "graphs": "skipped", "timing": "skipped", "tensorrt": "skipped",
                      "families": "ok"}, lines
    assert code == 0
    by_name = {r["name"]: r for r in lines}
    assert by_name["session"]["placement"]["memcpy_nodes"] == 0
    assert by_name["race"]["max_rel_after_sync"] < 1e-3
    assert 0.5 < by_name["fractional_t"]["ratio"] < 2
    assert by_name["families"]["sdxl"]["rel_err"] < 1e-3
    md = report.write_report(out).read_text()
    assert "| 4 | fractional_t | ok |" in md and "## 6. graphs (skipped)" in md
    for command in ("prepare", "grid", "vae"):  # the artefact of make_device_data is the tiny grid's (cached)
        assert fullsize.main([command, str(data), "--dry-run", "--no-compile"]) == 0, command
    full = {r["name"]: r for r in (json.loads(line) for line in (data / "results.jsonl").read_text().splitlines())}
    grid = full["fullsize grid"]["rows"]
    assert {(r["config"], r["batch"], r["steps"]) for r in grid} == {
        (c, b, s) for c in ("torch eager", "ORT cpu recipe") for b in (1, 4) for s in (1, 4)}
    assert all(r["images_per_s"] > 0 for r in grid)
    vae = full["fullsize vae"]
    assert vae["vae"]["source"] == "ort" and vae["overflowing vae"]["source"] == "torch-fp32"
    assert "| config | batch | steps | call_ms | images_per_s |" in report.write_report(data).read_text()
