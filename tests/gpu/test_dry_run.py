"""tests/gpu/run.py's machinery in the engine's suite (fast): the carried bundle round trip with its
checks, the time boxes, the skips and the last line. The whole rehearsal (every step, the GPU machine's
versions) is ``make gpu-rehearsal``."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import prepare_wheels  # noqa: E402
import run  # noqa: E402


def _wheel(folder: Path, name: str, payload: bytes) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{name}/__init__.py", payload)
        z.writestr(f"{name}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        z.writestr(f"{name}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{name}-1.0.dist-info/RECORD", "")
    return path


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    """Two wheels packed as for the GPU machine, with parts small enough that there are several."""
    dl, carried = tmp_path / "dl", tmp_path / "carried"
    dl.mkdir(), carried.mkdir()
    import os

    wheels = [_wheel(dl, "alpha", b"VALUE = 1\n# " + os.urandom(300_000).hex().encode()),
              _wheel(dl, "onnxruntime_gpu", b"VALUE = 2\n# " + b"x" * 200_000)]
    monkeypatch.setattr(prepare_wheels, "tree_bytes", lambda: 0)
    monkeypatch.setattr(prepare_wheels, "CALL_LIMIT", 200_000 + prepare_wheels.MARGIN)
    (tmp_path / "pack").mkdir()
    manifest = prepare_wheels.pack(wheels, carried, tmp_path / "pack")
    return carried, manifest


def test_the_bundle_installs_after_its_checks_and_is_reused(bundle, tmp_path):
    carried, manifest = bundle
    assert manifest["calls"] == len(manifest["parts"]) >= 2  # split at the call limit
    assert all((carried / p).stat().st_size <= manifest["part_bytes"] for p in manifest["parts"])
    site = tmp_path / "site"
    first = run.install(carried, site)
    assert first["wheels"] == 2 and not first["reused"]
    code = "import alpha, onnxruntime_gpu; print(alpha.VALUE + onnxruntime_gpu.VALUE)"
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert done.stdout.strip() == "3", done.stderr
    assert run.install(carried, site)["reused"]  # the second call on a machine still held


def test_a_damaged_or_missing_part_stops_the_install(bundle, tmp_path):
    carried, manifest = bundle
    last = sorted(manifest["parts"])[-1]
    data = bytearray((carried / last).read_bytes())
    data[-1] ^= 1
    (carried / last).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        run.install(carried, tmp_path / "site")
    (carried / last).unlink()
    with pytest.raises(FileNotFoundError, match="every part"):
        run.install(carried, tmp_path / "site2")


def test_steps_skip_without_a_gpu_or_budget_and_the_last_line_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    code = run.main([str(out), "--work", str(tmp_path / "work"), "--steps", "graphs,sdturbo_prepare,sdturbo_grid",
                     "--budget", "30"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last["versions"]) == {"numpy", "onnxruntime", "torch"}
    steps = last["steps"]
    import torch

    if not torch.cuda.is_available():
        assert steps["graphs"] == "skipped: no GPU"
    assert steps["sdturbo_prepare"].startswith("skipped: budget")  # its box does not fit in 30 s
    assert steps["sdturbo_grid"] == "skipped: needs sdturbo_prepare"
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "results.jsonl", "summary.json"]  # no grid: no chart


def test_a_step_past_its_box_is_failed_and_the_next_still_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(run.STEPS, "providers", (1, 1, ()))  # a real import of torch+ORT takes longer than 1 s
    out = tmp_path / "out"
    code = run.main([str(out), "--work", str(tmp_path / "work"), "--steps", "providers,tensorrt", "--budget", "200"])
    steps = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"]
    assert steps["providers"].startswith("failed: timed out after")
    assert steps["tensorrt"].startswith("skipped")  # not blocked: it ran (and has no GPU or no TensorRT)
    assert code == 1


def test_the_chart_has_one_panel_per_grid(tmp_path):
    rows = [{"config": c, "batch": b, "steps": s, "images_per_s": float(b * 10 / s)}
            for c in ("torch eager", "ORT") for b in (1, 4) for s in (1, 4)]
    lines = [{"name": "sdturbo_grid", "status": "ok", "rows": rows}, {"name": "x", "status": "ok"}]
    path = run.chart(tmp_path, lines)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
