"""Memory and disk: the tree's peak as the benchmark reports it, and the checks made before an export or
an optimization starts (free memory, free disk), with the machine's figures replaced by test values."""

import json
import subprocess
import sys
import time

import pytest

from conftest import checkpoint_of, tiny_model
from lib_ort import memory
from lib_ort.bench.memory import TreeMemory, tree_pids
from lib_ort.errors import DiskFull, NotEnoughMemory
from lib_ort.export import export_model
from lib_ort.optimize import optimize_export
from lib_ort.parts.unet import UNET
from lib_ort.registry import Registry

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

#: a child that holds 300 MiB (touched, so resident) for a moment
_HOLDER = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('ready', flush=True); time.sleep(1.5)"


def test_tree_peak_counts_the_child_and_the_parent_at_once():
    with TreeMemory(interval=0.02) as mem:
        mem.phase("child")
        child = subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        assert child.pid in tree_pids(mem.pid)
        time.sleep(0.3)
        child.wait()
    report = mem.report()
    rows = {r["pid"]: r for r in report["processes"]}
    parent, kid = rows[mem.pid], rows[child.pid]
    assert kid["hwm_mb"] >= 300 and kid["peak_rss_mb"] >= 300
    # the tree's sampled peak holds both at the same moment; the sum of the processes' peaks bounds it
    assert report["peak_rss_mb"] >= kid["peak_rss_mb"] + 0.5 * parent["peak_rss_mb"]
    assert report["peak_rss_mb"] <= report["sum_of_process_peaks_mb"] + 1
    assert report["phases_peak_rss_mb"]["child"] == report["peak_rss_mb"]
    assert report["samples"] > 10


def test_memory_check_says_what_is_needed_and_what_is_free(monkeypatch):
    need = memory.Need(weights_mb=10 * 1024, ep="cuda")  # an SDXL UNet's fp32 weights
    monkeypatch.setattr(memory, "mem_available_mb", lambda: 4 * 1024.0)
    with pytest.raises(NotEnoughMemory, match=r"needs about 14\.1 GB .*only 4\.0 GB is available") as caught:
        memory.check_memory(need, "the SDXL UNet")
    assert caught.value.needed_mb == need.optimize_mb and caught.value.available_mb == 4096
    monkeypatch.setattr(memory, "mem_available_mb", lambda: 64 * 1024.0)
    assert memory.check_memory(need, "the SDXL UNet") == 64 * 1024
    monkeypatch.setattr(memory, "mem_available_mb", lambda: None)  # unknown: not refused on a guess
    assert memory.check_memory(need, "the SDXL UNet") is None
    monkeypatch.setattr(memory, "mem_available_mb", lambda: 1.0)
    monkeypatch.setenv(memory.SKIP_MEMORY_CHECK_ENV, "1")
    assert memory.check_memory(need, "the SDXL UNet") is None


def test_each_recipe_has_its_own_measured_factor(monkeypatch):
    """SDXL-Turbo (10.3 GB of fp32 weights) with 12 GB free: the CPU recipe (measured 0.50 of the export)
    fits and must not be refused; the cuda recipe (1.31) does not; OpenVINO's whole-model pass (2.17) even
    less. A recipe without a measured factor gets the largest."""
    from lib_ort import providers

    monkeypatch.setattr(memory, "mem_available_mb", lambda: 12 * 1024.0)
    sdxl = 10.3 * 1024
    assert memory.check_memory(memory.Need(sdxl, "cpu"), "the SDXL UNet") == 12 * 1024
    for ep in ("cuda", "dml", "openvino", "tensorrt"):
        with pytest.raises(NotEnoughMemory):
            memory.check_memory(memory.Need(sdxl, ep), "the SDXL UNet")
    assert set(memory.OPTIMIZE_FACTORS) == {p.key for p in providers.PROVIDERS}
    assert memory.Need(sdxl).optimize_mb == max(memory.Need(sdxl, ep).optimize_mb for ep in memory.OPTIMIZE_FACTORS)


def test_optimization_is_refused_before_the_child_starts_when_memory_is_short(tmp_path, export_of, monkeypatch):
    reg = Registry(tmp_path / "reg")
    monkeypatch.setattr(memory, "mem_available_mb", lambda: 100.0)
    with pytest.raises(NotEnoughMemory, match="only 0.1 GB is available.*nothing was started"):
        optimize_export(export_of("tiny-sd1"), "cpu", reg, checkpoint=checkpoint_of("tiny-sd1"))
    assert not reg.root.exists() or not any(reg.root.iterdir())


def test_export_is_refused_on_a_disk_too_small(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(memory, "disk_free_mb", lambda folder: seen.append(folder) or 0.5)
    with pytest.raises(DiskFull, match=r"needs about 1\.0 GB of free disk space .*only 0\.0 GB is free"):
        export_model(UNET, tiny_model("tiny-sd1"), tmp_path / "exports" / "one")
    assert seen and (not (tmp_path / "exports").exists() or not any((tmp_path / "exports").iterdir()))


def test_optimization_is_refused_when_the_artefact_would_not_fit(tmp_path, export_of, monkeypatch):
    reg = Registry(tmp_path / "reg")
    monkeypatch.setattr(memory, "disk_free_mb", lambda folder: 10.0)
    with pytest.raises(DiskFull, match="artefact needs about"):
        optimize_export(export_of("tiny-sd1"), "cpu", reg, checkpoint=checkpoint_of("tiny-sd1"))
    assert not reg.root.exists() or not any(reg.root.iterdir())


def test_bench_reports_the_tree_peak_per_phase_and_per_process(shared_registry, capsys):
    from lib_ort.cli import main

    # a fresh seed: the export and the optimization run in this call (not cached)
    assert main(["--root", str(shared_registry.root), "bench", "--arch", "tiny-sd2", "--seed", "7", "--runs", "2",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    mem = result["memory"]
    assert result["peak_rss_mb"] == mem["peak_rss_mb"] > 0
    assert {"build", "torch", "export", "optimize", "ort"} <= set(mem["phases_peak_rss_mb"])
    children = [p for p in mem["processes"] if p["name"] == "lib_ort.olive_child"]
    assert len(children) == 1 and children[0]["phase"] == "optimize"
    assert result["optimize_peak_rss_mb"] == children[0]["hwm_mb"] > 50
    # the tree's peak during the optimization is the parent and the child together
    assert mem["phases_peak_rss_mb"]["optimize"] >= children[0]["peak_rss_mb"]
    assert mem["peak_rss_mb"] <= mem["sum_of_process_peaks_mb"] + 1
