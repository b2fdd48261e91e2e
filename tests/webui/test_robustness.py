"""Bad situations on a real host: each ends in an image made by PyTorch with the true reason (console,
comment under the image, infotext), or in a clean refusal, and the registry stays valid. Once the
cause is gone, the next job runs on ONNX Runtime again without a restart."""

from __future__ import annotations

import contextlib
import errno
import importlib.abc
import importlib.machinery
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import REPO, StubSdModel, script_runner
from modules import devices, errors, sd_unet, shared
from modules.infotext_utils import parse_generation_parameters
from modules.processing import StableDiffusionProcessing, run_job

from lib_ort.webui import service, settings
from lib_ort.webui.unet import LABEL, OrtTurboUnet


# -- helpers ------------------------------------------------------------------------------------------

class _BrokenOnnxruntime(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import onnxruntime`` that raises while the package initialises (a DLL that does not load)."""

    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise OSError("libonnxruntime_providers_shared.so: cannot open shared object file")


@contextlib.contextmanager
def onnxruntime_import(state: str):
    """``"missing"``: not installed (None in sys.modules); ``"raises"``: its import raises OSError."""
    saved = {k: v for k, v in sys.modules.items() if k == "onnxruntime" or k.startswith("onnxruntime.")}
    for k in saved:
        del sys.modules[k]
    blocker = _BrokenOnnxruntime()
    if state == "missing":
        sys.modules["onnxruntime"] = None
    else:
        sys.meta_path.insert(0, blocker)
    settings._status_of_this_install.cache_clear()
    try:
        yield
    finally:
        if blocker in sys.meta_path:
            sys.meta_path.remove(blocker)
        sys.modules.pop("onnxruntime", None)
        sys.modules.update(saved)
        settings._status_of_this_install.cache_clear()


def run(extension, **kwargs):
    p = StableDiffusionProcessing(script_runner(extension), **kwargs)
    return p, run_job(p)


def made_by_pytorch(p, processed, reason: str) -> None:
    """An image, and the reason in the infotext and under the image."""
    assert processed.images and torch.isfinite(processed.images[0]).all()
    text = processed.infotexts[0]
    ours = parse_generation_parameters(text).get("ORT Turbo", "")
    assert ours.startswith("PyTorch fallback: ") and reason in ours, text
    assert any(reason in c for c in p.comments), p.comments
    assert "NoneType" not in processed.infotexts[0]


def made_by_ort(processed, exported) -> None:
    assert f"ORT Turbo: {exported['id']} (CPU)" in processed.infotexts[0], processed.infotexts[0]


def registry_valid(*ids) -> None:
    rows = service.registry().list()
    assert all(r.valid for r in rows), [(r.id, r.problem) for r in rows]
    assert set(ids) <= {r.id for r in rows}



def stop_at_toolchain(progress=None):
    """In place of ``service.toolchain``: the export stops after the trace, before the minutes of Olive."""
    raise service.OrtTurboError("stopped here by the test")


@contextlib.contextmanager
def artefact_put_back_afterwards(artefact_id: str):
    """Take an artefact's folder out of the registry and put it back afterwards (no new export needed)."""
    folder = service.registry().root / artefact_id
    aside = folder.parent / f".aside-{artefact_id}"
    shutil.copytree(folder, aside)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(aside, folder)
        service.artefacts_changed()


# -- ONNX Runtime missing or broken --------------------------------------------------------------------

@pytest.mark.parametrize("state, detail", [("missing", "ModuleNotFoundError"),
                                           ("raises", "OSError: libonnxruntime_providers_shared.so")])
def test_no_usable_onnxruntime_generation_runs_on_pytorch_and_says_why(fresh_webui, exported, extension, capfd,
                                                                      state, detail):
    shared.opts.data["sd_unet"] = LABEL
    with onnxruntime_import(state):
        for _ in range(2):  # the second job says the same, not "'NoneType' object is not callable"
            p, processed = run(extension, steps=2)
            made_by_pytorch(p, processed, "ONNX Runtime cannot be imported in this Python")
            assert detail in processed.infotexts[0]
        assert "[ORT Turbo] PyTorch UNet will run: ONNX Runtime cannot be imported" in capfd.readouterr().err
        registry_valid(exported["id"])
        assert sd_unet.get_unet_option().label == LABEL  # the selection itself still works
    # onnxruntime importable again: the next job runs on it, without restarting the WebUI
    p, processed = run(extension, steps=2)
    made_by_ort(processed, exported)


@pytest.mark.parametrize("state", ["missing", "raises"])
def test_export_is_refused_first_when_the_webui_cannot_run_it(client, no_toolchain, state):
    with onnxruntime_import(state):
        start = time.monotonic()
        refused = client.post("/ort-turbo/v1/export", json={"provider": "CPU"})
        vae = client.post("/ort-turbo/v1/export-vae", json={"provider": "CPU"})
    assert refused.status_code == 503 and "ONNX Runtime cannot be imported" in refused.json()["detail"]
    assert vae.status_code == 503 and "ONNX Runtime cannot be imported" in vae.json()["detail"]
    assert time.monotonic() - start < 5  # before the trace, not minutes later


def test_provider_missing_from_the_installed_build(fresh_webui, exported, extension, client, no_toolchain,
                                                   monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["AzureExecutionProvider"])
    shared.opts.data["sd_unet"] = LABEL
    p, processed = run(extension, steps=1)
    made_by_pytorch(p, processed, f"this ONNX Runtime ({onnxruntime.__version__}) has no CPUExecutionProvider")
    refused = client.post("/ort-turbo/v1/export", json={"provider": "cpu"})
    assert refused.status_code == 503 and "has no CPUExecutionProvider" in refused.json()["detail"]
    cuda = client.post("/ort-turbo/v1/export", json={"provider": "cuda"})
    assert cuda.status_code == 503 and "has no CUDAExecutionProvider" in cuda.json()["detail"]
    monkeypatch.undo()
    made_by_ort(run(extension, steps=1)[1], exported)


def test_provider_libraries_that_fail_to_load(fresh_webui, exported, extension, monkeypatch):
    """The session cannot be made: said every job, tried again only when something changes."""
    import onnxruntime

    tries = []

    def failing_session(*args, **kwargs):
        tries.append(1)
        raise RuntimeError("libcublasLt.so.12: cannot open shared object file")

    monkeypatch.setattr(onnxruntime, "InferenceSession", failing_session)
    shared.opts.data["sd_unet"] = LABEL
    for _ in range(2):
        p, processed = run(extension, steps=2)
        made_by_pytorch(p, processed, "libcublasLt.so.12: cannot open shared object file")
    assert len(tries) == 1  # not a session attempt per call or per job
    monkeypatch.undo()
    service.artefacts_changed()  # e.g. exported again, or another provider chosen
    made_by_ort(run(extension, steps=1)[1], exported)


def test_any_exception_while_binding_is_a_fallback_not_a_failed_job(fresh_webui, exported, extension, monkeypatch):
    def broken(info, ep):
        raise KeyError("checkpoint")

    monkeypatch.setattr(service, "find_artefact", broken)
    shared.opts.data["sd_unet"] = LABEL
    p, processed = run(extension, steps=1)
    made_by_pytorch(p, processed, "ONNX Runtime could not load the artefact (KeyError: 'checkpoint')")
    assert isinstance(sd_unet.current_unet, OrtTurboUnet)


# -- the artefact changes under a running WebUI ------------------------------------------------------

@pytest.mark.parametrize("damage, reason", [("delete", "weights.pb is missing. Export again."),
                                            ("truncate", "(truncated or replaced). Export again.")])
def test_artefact_files_damaged_while_it_is_the_active_unet(fresh_webui, exported, extension, damage, reason):
    shared.opts.data["sd_unet"] = LABEL
    made_by_ort(run(extension, steps=1)[1], exported)
    with artefact_put_back_afterwards(exported["id"]) as folder:
        weights = folder / "weights.pb"
        if damage == "delete":
            weights.unlink()
        else:
            with open(weights, "r+b") as f:
                f.truncate(100)
        for _ in range(2):
            p, processed = run(extension, steps=1)
            made_by_pytorch(p, processed, reason)
    # the files are back (as after exporting again): ORT serves the next job
    made_by_ort(run(extension, steps=1)[1], exported)
    registry_valid(exported["id"])


def test_deleting_the_artefact_a_generation_is_using(client, exported, extension):
    shared.opts.data["sd_unet"] = LABEL
    with artefact_put_back_afterwards(exported["id"]):
        p = StableDiffusionProcessing(script_runner(extension), steps=3)
        deleted = []
        p.step_callback = lambda i: deleted.append(client.delete(f"/ort-turbo/v1/artefacts/{exported['id']}"))\
            if i == 0 else None
        processed = run_job(p)
        assert deleted[0].status_code == 200
        text = processed.infotexts[0]
        assert parse_generation_parameters(text)["ORT Turbo"].startswith("partly PyTorch: no CPU artefact"), text  # step 1 on ORT, then PyTorch, said so
        assert processed.images and torch.isfinite(processed.images[0]).all()
        registry_valid()
        assert exported["id"] not in [r["id"] for r in client.get("/ort-turbo/v1/artefacts").json()]
    made_by_ort(run(extension, steps=1)[1], exported)


def test_switching_checkpoint_while_a_session_is_loaded(fresh_webui, exported, extension, sd2_model):
    """What sd_models.reload_model_weights does: apply_unet("None"), swap, apply_unet()."""
    shared.opts.data["sd_unet"] = LABEL
    made_by_ort(run(extension, steps=1)[1], exported)
    other = StubSdModel("tiny-sd1", "models/Stable-diffusion/other.safetensors")
    for model in (other, sd2_model):
        sd_unet.apply_unet("None")
        shared.sd_model = model
        sd_unet.apply_unet()
        p, processed = run(extension, steps=1)
        if model is other:
            made_by_pytorch(p, processed, "no CPU artefact for other.safetensors")
        else:
            made_by_ort(processed, exported)


# -- exports: disk full, killed, two at once ---------------------------------------------------------------

def _leftovers(root: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.name.startswith((".tmp-", ".export-")))


def test_disk_full_while_writing_an_export(client, exported, monkeypatch):
    root = service.registry().root
    before = _leftovers(root)
    real_write = pathlib.Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == "export.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    refused = client.post("/ort-turbo/v1/export", json={"provider": "cpu"})
    assert refused.status_code == 507, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith("the disk is full") and "nothing was registered" in detail and str(root) in detail
    assert _leftovers(root) == before  # the half-written folder went with the error
    assert not list((root / "exports").glob("*-opset*"))
    registry_valid(exported["id"])
    monkeypatch.undo()  # space again: the same export works
    assert client.post("/ort-turbo/v1/export", json={"provider": "cpu"}).status_code == 200
    registry_valid(exported["id"])


def test_an_export_killed_midway_leaves_nothing_half_made(fresh_webui, tmp_path):
    """A real process, killed while it traces; then the same export in this process works."""
    from lib_ort.bench.architectures import build_unet
    from lib_ort.registry import Registry
    from lib_ort.pipeline import ensure_export, export_folder

    reg = Registry(tmp_path / "artefacts")
    record = {"hash": "ab" * 32, "name": "killed.safetensors"}
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from lib_ort.bench.architectures import build_unet; from lib_ort.registry import Registry;"
        "from lib_ort.pipeline import ensure_export;"
        "ensure_export(build_unet('tiny-sd2', seed=0), Registry(sys.argv[2]), {'hash': 'ab' * 32, 'name': 'k'});"
        "print('finished')"), str(REPO), str(reg.root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    exports = reg.root / "exports"
    deadline = time.monotonic() + 120  # its staging folder appears when the trace starts (after torch's import)
    staging = False
    while time.monotonic() < deadline and child.poll() is None and not staging:
        staging = exports.is_dir() and any(exports.glob(".export-*"))
        time.sleep(0.01)
    child.kill()
    out, err = child.communicate()
    assert staging and child.returncode == -9, (child.returncode, out, err[-2000:])  # killed mid-export
    assert [p.name for p in exports.iterdir() if not p.name.startswith(".")] == []  # no half export
    assert reg.list() == []
    folder, cached = ensure_export(build_unet("tiny-sd2", seed=0), reg, record)
    assert not cached and folder == export_folder(reg, record["hash"]) and (folder / "export.json").is_file()


def test_leftovers_of_a_killed_export_are_ignored_then_swept(client, exported, monkeypatch):
    root = service.registry().root
    stale = [root / ".tmp-optimize-cpu-killed", root / ".tmp-stage-cpu-killed", root / "exports" / ".export-killed"]
    for folder in stale:
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"half a model")
    (stale[1] / "manifest.json.part").write_text("{")
    old = time.time() - 2 * 24 * 3600
    for folder in stale:
        os.utime(folder, (old, old))
    registry_valid(exported["id"])
    assert not any(r.id.startswith(".") for r in service.registry().list())
    # the next export starts by sweeping what a killed one left a day ago (toolchain refused: no minutes spent)
    monkeypatch.setattr(service, "toolchain", stop_at_toolchain)
    client.post("/ort-turbo/v1/export", json={"provider": "cpu"})
    assert not any(f.exists() for f in stale)
    registry_valid(exported["id"])


def test_two_exports_at_once_the_second_is_refused(client, exported, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real = service._export

    def slow(*args, **kwargs):
        started.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "_export", slow)
    first = {}
    worker = threading.Thread(target=lambda: first.update(r=client.post("/ort-turbo/v1/export",
                                                                         json={"provider": "cpu"})))
    worker.start()
    try:
        assert started.wait(60)
        second = client.post("/ort-turbo/v1/export", json={"provider": "cpu"})
        vae = client.post("/ort-turbo/v1/export-vae", json={"provider": "cpu"})
    finally:
        release.set()
        worker.join(300)
    assert second.status_code == 409 and second.json()["detail"].startswith("an export is already running")
    assert "for CPU" in second.json()["detail"]
    assert vae.status_code == 409 and "an export is already running" in vae.json()["detail"]
    assert first["r"].status_code == 200, first["r"].text
    registry_valid(exported["id"])
    # the slot is free again: the next export is not refused (it is stopped at the toolchain, to save a minute)
    monkeypatch.setattr(service, "toolchain", stop_at_toolchain)
    again = client.post("/ort-turbo/v1/export", json={"provider": "cpu"})
    assert again.status_code == 500 and again.json()["detail"] == "stopped here by the test"


def test_typed_errors_map_to_statuses():
    from lib_ort.errors import (ArtefactError, DiskFull, ExportBusy, ExportError, NoCheckpointLoaded, NotEnoughMemory,
                                OptimizationError, RuntimeUnavailable)
    from lib_ort.webui.api import http_status

    assert [http_status(e) for e in (NoCheckpointLoaded(), ExportBusy("x"), RuntimeUnavailable("x"), DiskFull("x"),
                                     ArtefactError("x"), ExportError("x"), ValueError("x"), NotEnoughMemory("x"),
                                     OptimizationError("x"))] == [
        409, 409, 503, 507, 409, 500, 500, 503, 500]


# -- the WebUI's own rules the stand-in now has ----------------------------------------------------------

def test_a_raising_hook_does_not_stop_the_job_and_options_are_still_restored(fresh_webui, extension, monkeypatch):
    """The WebUI reports a hook's exception and goes on; what ORT Turbo set before it raised is undone."""
    from lib_ort.webui import job

    def broken(self, sd_model):
        raise RuntimeError("VAE cast failed")

    monkeypatch.setattr(job.VaeScope, "apply", broken)
    seen = {}
    p = StableDiffusionProcessing(script_runner(extension), steps=1, cfg_scale=1.0)
    p.step_callback = lambda i: seen.setdefault("skip", shared.opts.skip_early_cond)
    processed = run_job(p)
    assert processed.images and seen["skip"] == 1.0
    assert "skip_early_cond" not in shared.opts.data  # restored although before_process raised
    reported = [e for e, _ in errors.exception_records]
    assert [str(e) for e in reported] == ["VAE cast failed"]
    errors.exception_records.clear()


def test_lowvram_leaves_the_pytorch_unet_where_the_webui_put_it(fresh_webui, exported, extension, sd2_model,
                                                               monkeypatch):
    moves = []
    monkeypatch.setattr(devices, "device", torch.device("cuda", 0))  # a GPU in name only: moves are recorded
    monkeypatch.setattr(sd2_model.unet, "to", lambda *a, **k: moves.append(a) or sd2_model.unet, raising=False)
    monkeypatch.setattr(sd2_model, "lowvram", True)
    shared.opts.data["sd_unet"] = LABEL
    p, processed = run(extension, steps=1, extra_network_data={"hypernet": ["x"]})  # a fallback to PyTorch
    assert "PyTorch fallback: hypernetworks" in processed.infotexts[0]
    sd_unet.apply_unet("None")
    assert torch.device("cuda", 0) not in [a[0] for a in moves if a]  # never to the GPU: lowvram's hooks do it
    monkeypatch.setattr(sd2_model, "lowvram", False)
    moves.clear()
    run(extension, steps=1, extra_network_data={"hypernet": ["x"]})
    assert (torch.device("cuda", 0),) in moves


def test_options_set_writes_a_value_equal_to_the_default():
    """options.py: compared with ``data``, not with the default (the old stand-in skipped the write)."""
    shared.opts.data.pop("img2img_fix_steps", None)
    try:
        assert shared.opts.set("img2img_fix_steps", False) is True
        assert shared.opts.data["img2img_fix_steps"] is False
        assert shared.opts.set("img2img_fix_steps", False) is False
    finally:
        shared.opts.data.pop("img2img_fix_steps", None)


class NanVae(torch.nn.Module):
    """A VAE that overflows in fp16 (NaN in its first pixel), as the stock SDXL VAE does."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    @property
    def dtype(self):
        return self.scale.dtype

    def forward(self, z):
        out = (z * self.scale).repeat_interleave(8, -1).repeat_interleave(8, -2)[:, :3]
        return out + float("nan") if self.dtype == torch.float16 else out


class NanSdModel(StubSdModel):
    def __init__(self):
        super().__init__("tiny-sd2", "models/Stable-diffusion/nan-vae.safetensors")
        self.first_stage_model = NanVae().to(devices.dtype_vae)

    def decode_first_stage(self, z):
        return self.first_stage_model(z)


@pytest.mark.parametrize("bfloat16", [True, False])
def test_the_webuis_nan_revert_stands_for_the_session_bfloat16_too(fresh_webui, extension, bfloat16):
    """auto_vae_precision_bfloat16 reverts to bf16, else fp32; ORT Turbo's fp16 VAE setting then keeps the
    WebUI's choice, also when the VAE was already fp16 when the job started (nothing switched by us)."""
    shared.opts.data["auto_vae_precision_bfloat16"] = bfloat16
    shared.sd_model = NanSdModel()
    expected = torch.bfloat16 if bfloat16 else torch.float32
    seen = []
    p = StableDiffusionProcessing(script_runner(extension), steps=1)
    processed = run_job(p)
    assert devices.dtype_vae == expected and torch.isfinite(processed.images[0]).all()
    for _ in range(2):
        p = StableDiffusionProcessing(script_runner(extension), steps=1)
        p.step_callback = lambda i: seen.append(devices.dtype_vae)
        assert torch.isfinite(run_job(p).images[0]).all()
    assert seen == [expected, expected] and devices.dtype_vae == expected


def test_an_onnx_runtime_error_mid_job_finishes_the_job_on_pytorch(fresh_webui, exported, extension, monkeypatch):
    from lib_ort.unet import OrtUnet

    real = OrtUnet.__call__
    calls = []

    def fails_from_the_second_call(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("CUDA out of memory")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(OrtUnet, "__call__", fails_from_the_second_call)
    shared.opts.data["sd_unet"] = LABEL
    p, processed = run(extension, steps=3)
    text = processed.infotexts[0]
    assert parse_generation_parameters(text)["ORT Turbo"] == \
        "partly PyTorch: ONNX Runtime failed (RuntimeError: CUDA out of memory)", text
    assert torch.isfinite(processed.images[0]).all()


def test_the_tab_says_why_it_will_not_export(fresh_webui, no_toolchain):
    import gradio as gr

    from lib_ort.webui import ui

    with onnxruntime_import("missing"):
        with pytest.raises(gr.Error, match="ONNX Runtime cannot be imported"):
            ui.export_clicked("CPU", progress=lambda *a, **k: None)
        with pytest.raises(gr.Error, match="ONNX Runtime cannot be imported"):
            ui.export_vae_clicked("CPU", progress=lambda *a, **k: None)


def test_export_refused_for_an_old_runtime_or_a_gpu_provider_without_a_gpu(client, no_toolchain, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.15.1")
    old = client.post("/ort-turbo/v1/export", json={"provider": "cpu"})
    assert old.status_code == 503 and "needs ONNX Runtime 1.16.0 or newer in the WebUI; it has 1.15.1" in old.text
    monkeypatch.undo()
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu = client.post("/ort-turbo/v1/export", json={"provider": "cuda"})
    assert gpu.status_code == 503 and "this WebUI's torch sees none" in gpu.json()["detail"]


@pytest.mark.parametrize("loads", [False, True])
def test_tensorrt_is_offered_only_when_its_libraries_load(monkeypatch, loads):
    """onnxruntime-gpu lists TensorrtExecutionProvider with no TensorRT installed: the settings say so."""
    import onnxruntime

    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: listed)
    monkeypatch.setattr(settings, "_tensorrt_loads", lambda: loads)
    settings._status_of_this_install.cache_clear()
    try:
        status = settings.provider_status()
        assert status["CUDA"] is None and status["CPU"] is None
        assert (status["TensorRT"] is None) is loads
        if not loads:
            assert "TensorRT (libnvinfer) is not installed" in status["TensorRT"]
            assert settings.resolve_provider("Automatic", status) == "cuda"
    finally:
        settings._status_of_this_install.cache_clear()
