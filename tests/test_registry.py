import json
import os
import stat

import pytest

from conftest import checkpoint_of
from lib_ort.errors import ArtefactError, NotEnoughMemory, OptimizationError
from lib_ort.optimize import Toolchain, optimize_export
from lib_ort.registry import MANIFEST, Registry, artefact_id


def _fake_artefact(registry: Registry, ckpt="a" * 64, ep="cpu", precision="fp32", **extra):
    work = registry.new_work_folder("test")
    (work / "model.onnx").write_bytes(b"graph" * 10)
    (work / "weights.pb").write_bytes(b"w" * 1000)
    manifest = {"checkpoint": {"hash": ckpt, "name": "test"}, "ep": ep, "precision": precision,
                "model_file": "model.onnx", "data_files": ["weights.pb"], "min_runtime_ort": "1.16.0", **extra}
    return registry.commit(work, manifest)


def test_commit_list_find_load_delete(tmp_path):
    reg = Registry(tmp_path)
    a = _fake_artefact(reg)
    assert a.id == artefact_id("a" * 64, "cpu", "fp32") == "aaaaaaaaaaaa-cpu-fp32"
    rows = reg.list()
    assert [(r.id, r.valid) for r in rows] == [(a.id, True)]
    assert reg.find("a" * 64, "cpu") == a.folder
    assert reg.find("a" * 64, "cuda") is None and reg.find("b" * 64, "cpu") is None
    loaded = reg.load(a.id, "a" * 64)
    assert loaded.manifest["files"] == {"model.onnx": 50, "weights.pb": 1000}
    reg.delete(a.id)
    assert reg.list() == [] and not a.folder.exists()
    with pytest.raises(ArtefactError, match="no artefact"):
        reg.delete(a.id)


@pytest.mark.parametrize("name", ["exports", ".", "", "..", "trt-cache", ".tmp-work", "unfinished", "../outside",
                                  "0" * 4096])
def test_delete_takes_only_an_artefact_never_the_registrys_own_folders(tmp_path, name):
    """``DELETE /ort-turbo/v1/artefacts/<id>`` hands the id from the URL to ``delete``: the raw exports, the
    TensorRT cache, work folders, a folder without a manifest, the registry itself or anything outside it
    must never go."""
    root = tmp_path / "reg"
    reg = Registry(root)
    a = _fake_artefact(reg)
    for folder in ("exports/abc-opset17", "trt-cache", ".tmp-work", "unfinished"):
        (root / folder).mkdir(parents=True)
        (root / folder / "keep").write_text("x")
    (tmp_path / "outside").mkdir()
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(ArtefactError, match="no artefact"):
        reg.delete(name)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    reg.delete(a.id)
    assert not a.folder.exists() and (root / "exports" / "abc-opset17" / "keep").is_file()


def test_recommit_replaces_only_when_the_new_one_is_complete(tmp_path):
    reg = Registry(tmp_path)
    _fake_artefact(reg)
    b = _fake_artefact(reg, note="second")
    assert reg.load(b.id).manifest["note"] == "second"
    assert [p.name for p in tmp_path.iterdir()] == [b.id]


def test_interrupted_write_leaves_registry_readable_without_the_entry(tmp_path, monkeypatch):
    reg = Registry(tmp_path)
    kept = _fake_artefact(reg, ckpt="k" * 64)
    # 1. a writer that died after copying files, before its manifest and rename
    work = reg.new_work_folder("optimize-cpu")
    (work / "model.onnx").write_bytes(b"partial")
    # 2. a commit cut at the final rename
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("-cpu-fp32") and "tmp" not in os.path.basename(str(dst)):
            raise OSError("disk unplugged")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        _fake_artefact(reg, ckpt="n" * 64)
    monkeypatch.setattr(os, "replace", real_replace)
    assert [r.id for r in reg.list()] == [kept.id]
    assert reg.find("n" * 64, "cpu") is None
    # the leftovers are hidden, and swept once stale
    assert any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    assert reg.sweep(max_age_s=0) >= 2
    assert [p.name for p in tmp_path.iterdir()] == [kept.id]


def test_sweep_reaches_the_raw_exports_staging_folders_and_keeps_fresh_ones(tmp_path):
    """A process killed while it traced leaves ``exports/.export-*``; one still running must not lose its folder."""
    reg = Registry(tmp_path)
    kept = _fake_artefact(reg)
    stale, fresh = tmp_path / "exports" / ".export-killed", tmp_path / "exports" / ".export-running"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"half")
    old = os.stat(stale).st_mtime - 2 * 24 * 3600
    os.utime(stale, (old, old))
    assert reg.sweep() == 1
    assert not stale.exists() and fresh.exists() and [r.id for r in reg.list()] == [kept.id]


def test_an_incomplete_manifest_is_an_invalid_row_not_an_exception(tmp_path):
    reg = Registry(tmp_path)
    a = _fake_artefact(reg)
    manifest = json.loads((a.folder / MANIFEST).read_text())
    del manifest["files"]
    (a.folder / MANIFEST).write_text(json.dumps(manifest))
    (row,) = reg.list()
    assert not row.valid and "manifest.json is incomplete (KeyError: 'files')" in row.problem
    with pytest.raises(ArtefactError, match="incomplete"):
        reg.load(a.id)


def test_an_onnxruntime_whose_import_raises_does_not_break_the_registry(tmp_path, monkeypatch):
    import sys

    from lib_ort import registry

    class Broken:
        def __getattr__(self, name):
            raise OSError("cannot load onnxruntime_pybind11_state")

    monkeypatch.setitem(sys.modules, "onnxruntime", Broken())
    assert registry.runtime_ort_version() is None
    reg = Registry(tmp_path)
    a = _fake_artefact(reg)
    assert [r.valid for r in reg.list()] == [True] and reg.load(a.id).id == a.id


def test_truncated_model_file_is_a_clear_error(tmp_path):
    reg = Registry(tmp_path)
    a = _fake_artefact(reg)
    with open(a.folder / "weights.pb", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ArtefactError, match="weights.pb is 10 bytes, the manifest says 1000"):
        reg.load(a.id)
    (row,) = reg.list()
    assert not row.valid and "truncated" in row.problem


def test_missing_file_and_missing_manifest(tmp_path):
    reg = Registry(tmp_path)
    a = _fake_artefact(reg)
    (a.folder / "model.onnx").unlink()
    with pytest.raises(ArtefactError, match="model.onnx is missing"):
        reg.load(a.id)
    (a.folder / MANIFEST).unlink()
    with pytest.raises(ArtefactError, match="no manifest.json"):
        reg.load(a.folder)


def test_manifest_for_another_checkpoint_is_refused(tmp_path):
    reg = Registry(tmp_path)
    a = _fake_artefact(reg, ckpt="a" * 64)
    with pytest.raises(ArtefactError, match="not for the loaded one"):
        reg.load(a.id, checkpoint_hash="b" * 64)


def test_version_skew_is_refused(tmp_path):
    reg = Registry(tmp_path)
    a = _fake_artefact(reg, ckpt="c" * 64)
    manifest = json.loads((a.folder / MANIFEST).read_text())
    (a.folder / MANIFEST).write_text(json.dumps(dict(manifest, format=99)))
    with pytest.raises(ArtefactError, match="manifest format 99"):
        reg.load(a.id)
    (a.folder / MANIFEST).write_text(json.dumps(dict(manifest, min_runtime_ort="99.1.0")))
    with pytest.raises(ArtefactError, match="needs ONNX Runtime 99.1.0 or newer"):
        reg.load(a.id)
    (a.folder / MANIFEST).write_text("{not json")
    with pytest.raises(ArtefactError, match="unreadable"):
        reg.load(a.id)


def _fake_interpreter(tmp_path, body: str):
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_killed_optimization_leaves_no_artefact_and_says_why(tmp_path, export_of):
    reg = Registry(tmp_path / "reg")
    killer = _fake_interpreter(tmp_path, 'echo "loading olive"; kill -9 $$')
    with pytest.raises(NotEnoughMemory, match="ran out of memory: the system killed it \\(SIGKILL\\).*GB was available"):
        optimize_export(export_of("tiny-sd1"), "cpu", reg, checkpoint=checkpoint_of("tiny-sd1"),
                        toolchain=Toolchain(python=killer))
    assert reg.list() == [] and list(reg.root.iterdir()) == []


def test_failed_optimization_reports_the_log_tail(tmp_path, export_of):
    reg = Registry(tmp_path / "reg")
    failing = _fake_interpreter(tmp_path, 'echo "ModuleNotFoundError: No module named olive" >&2; exit 1')
    with pytest.raises(OptimizationError, match="(?s)exit code 1.*No module named olive"):
        optimize_export(export_of("tiny-sd1"), "cpu", reg, checkpoint=checkpoint_of("tiny-sd1"),
                        toolchain=Toolchain(python=failing))
    assert list(reg.root.iterdir()) == []


def test_optimization_timeout_stops_the_child(tmp_path, export_of):
    reg = Registry(tmp_path / "reg")
    slow = _fake_interpreter(tmp_path, "sleep 30")
    with pytest.raises(OptimizationError, match="longer than 1 s"):
        optimize_export(export_of("tiny-sd1"), "cpu", reg, checkpoint=checkpoint_of("tiny-sd1"),
                        toolchain=Toolchain(python=slow), timeout=1)
    assert list(reg.root.iterdir()) == []


def test_toolchain_environment_is_a_parameter(tmp_path, export_of):
    """The child runs with the given interpreter and environment (here: it records them)."""
    reg = Registry(tmp_path / "reg")
    record = tmp_path / "seen.txt"
    spy = _fake_interpreter(tmp_path, f'echo "$MARK $PYTHONPATH" > {record}; exit 2')
    with pytest.raises(OptimizationError):
        optimize_export(export_of("tiny-sd1"), "cpu", reg, checkpoint=checkpoint_of("tiny-sd1"),
                        toolchain=Toolchain(python=spy, env={"MARK": "toolchain-env"}))
    seen = record.read_text()
    assert seen.startswith("toolchain-env ") and str(tmp_path) not in seen.split()[1].split(os.pathsep)[0]


def test_real_artefact_manifest_records_what_the_issue_asks(artefact_of):
    m = artefact_of("tiny-sdxl", "cpu").manifest
    assert m["family"] == "sdxl" and m["io"]["adm_dim"] == 96
    assert m["input_names"] == ["sample", "timestep", "encoder_hidden_states", "y"]
    assert m["shape_ranges"]["batch"] == [1, 16] and m["shape_ranges"]["height"][0] == 2
    assert m["recipe"]["provider"] == "CPUExecutionProvider"
    for key in ("onnxruntime", "olive-ai", "torch", "onnx"):
        assert m["versions"][key]
    assert m["versions"]["olive-ai"] == "0.13.0"
    assert m["timings"]["optimize_s"] > 0


def test_find_without_a_precision_prefers_the_providers_own(tmp_path):
    """A CPU fp16 UNet (made by tests, or by hand) never shadows the fp32 one the CPU recipe makes."""
    reg = Registry(tmp_path)
    fp16 = _fake_artefact(reg, precision="fp16")
    assert reg.find("a" * 64, "cpu") == fp16.folder  # the only one
    fp32 = _fake_artefact(reg, precision="fp32")
    assert reg.find("a" * 64, "cpu") == fp32.folder
    assert reg.find("a" * 64, "cpu", "fp16") == fp16.folder
