"""The OpenVINO provider for real: a tiny UNet and VAE, optimized with the "openvino" recipe here, run through
``plan_session("openvino")`` in a Python that has onnxruntime-openvino (it replaces onnxruntime, so it cannot
sit in this environment), against PyTorch.

Runs only when ``ORT_TURBO_OPENVINO_PYTHON`` names that interpreter (``make setup-openvino`` makes
.venv-openvino: onnxruntime-openvino and numpy, no torch). fp32 must match PyTorch closely; bf16 only on a CPU
with native bf16 (elsewhere "Automatic" never picks it), loosely, and must differ from fp32 (the precision
really reached OpenVINO)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_model
from lib_ort.bench.vae_architectures import build_vae
from lib_ort.pipeline import prepare_vae
from lib_ort.registry import Registry
from lib_ort.unet import input_dtypes

OPENVINO_PYTHON = os.environ.get("ORT_TURBO_OPENVINO_PYTHON")
pytestmark = pytest.mark.skipif(
    not OPENVINO_PYTHON, reason="ORT_TURBO_OPENVINO_PYTHON is not set (an interpreter with onnxruntime-openvino "
                                "and numpy: make setup-openvino, then ORT_TURBO_OPENVINO_PYTHON=.venv-openvino/bin/python)")
RUNNER = Path(__file__).resolve().parent / "tools" / "openvino_run.py"
PRECISIONS = ("fp32", "bf16")


def rel(out, ref) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _unet_case(artefact, folder: Path) -> tuple[dict, np.ndarray]:
    m = artefact.manifest
    dtypes = input_dtypes(m)
    torch.manual_seed(0)
    x, context = torch.randn(2, m["io"]["in_channels"], 8, 12), torch.randn(2, 77, m["io"]["context_dim"])
    timesteps = torch.tensor([999.0, 500.0])
    with torch.no_grad():
        ref = tiny_model("tiny-sd2")(x, timesteps, context)
    feeds = dict(zip(m["input_names"], (x, timesteps, context)))
    np.savez(folder / "unet.npz", **{n: t.to(dtypes[n]).numpy() for n, t in feeds.items()})
    return {"model": str(artefact.model_path), "inputs": str(folder / "unet.npz")}, ref.numpy()


#: the UNet weight changed in the "lora" case (as the WebUI's Lora extension changes a weight): the output conv,
#: its torch name and its initializer's in the export (the clean fp32 graph keeps the export's names)
CHANGED_WEIGHT, CHANGED_INITIALIZER = "out.2.weight", "unet.out.2.weight"


def _lora_case(artefact, folder: Path) -> tuple[dict, np.ndarray]:
    """The UNet with one weight replaced through ``create_session``'s initializers (how a LoRA reaches an ONNX
    session, ``OrtUnet.replace_weights``), against PyTorch with the same weight changed."""
    import copy

    from lib_ort.onnx_weights import Weights

    case, _ = _unet_case(artefact, folder)
    model = copy.deepcopy(tiny_model("tiny-sd2"))
    weight = dict(model.named_parameters())[CHANGED_WEIGHT]
    assert CHANGED_INITIALIZER in Weights(artefact.model_path).names()
    with torch.no_grad():
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)) * weight.abs().max())
        with np.load(case["inputs"]) as data:
            x, timesteps, context = (torch.from_numpy(data[n]).float() for n in artefact.manifest["input_names"])
        ref = model(x, timesteps, context)
    np.savez(folder / "lora.npz", **{CHANGED_INITIALIZER: weight.detach().numpy()})
    return dict(case, initializers=str(folder / "lora.npz")), ref.numpy()


def _vae_case(artefact, model, folder: Path) -> tuple[dict, np.ndarray]:
    part = artefact.manifest["parts"]["decoder"]
    torch.manual_seed(1)
    z = torch.randn(1, 4, 8, 12)
    with torch.no_grad():
        ref = model.decode(z).sample
    np.savez(folder / "vae.npz", **{part["input_name"]: z.numpy()})
    return {"model": str(artefact.folder / part["model_file"]), "inputs": str(folder / "vae.npz")}, ref.numpy()


@pytest.fixture(scope="module")
def ran(artefact_of, tmp_path_factory):
    """Each case in each precision, in one child (one import of OpenVINO): (report, {(case, precision): (out, ref)})."""
    folder = tmp_path_factory.mktemp("openvino-run")
    vae = build_vae("tiny-diffusers", seed=0)
    vae_artefact = prepare_vae(vae, Registry(tmp_path_factory.mktemp("openvino-vae-registry")),
                               {"hash": "c" * 64, "name": "tiny"}, {"hash": "d" * 64, "name": "tiny-diffusers"},
                               "openvino", "fp32")
    cases = {"unet": _unet_case(artefact_of("tiny-sd2", "openvino"), folder),
             "vae": _vae_case(vae_artefact, vae, folder),
             "lora": _lora_case(artefact_of("tiny-sd2", "openvino"), folder)}
    runs = [dict(case, precision=p, output=str(folder / f"{name}-{p}.npy"))
            for name, (case, _) in cases.items() for p in PRECISIONS]
    (folder / "job.json").write_text(json.dumps({"runs": runs}))
    done = subprocess.run([OPENVINO_PYTHON, str(RUNNER), str(folder / "job.json")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    results = {(name, p): (np.load(folder / f"{name}-{p}.npy"), ref)
               for name, (_, ref) in cases.items() for p in PRECISIONS}
    return report, results


def test_every_session_ran_on_openvino_in_the_planned_precision_without_torch(ran):
    report, _ = ran
    assert [r["providers"][0] for r in report["runs"]] == ["OpenVINOExecutionProvider"] * 6
    assert [r["precision"] for r in report["runs"]] == list(PRECISIONS) * 3
    assert not report["torch_imported"]  # the plan took the thread count; the child has no torch


def test_an_option_openvino_refuses_gives_a_refused_session_not_a_cpu_one(ran):
    report, _ = ran
    assert report["refused"] and "fell back to CPUExecutionProvider instead of OpenVINOExecutionProvider" in report["refused"]


@pytest.mark.parametrize("name", ["unet", "vae", "lora"])
def test_fp32_matches_pytorch(ran, name):
    out, ref = ran[1][(name, "fp32")]
    assert out.shape == ref.shape and np.abs(ref).max() > 0.01
    assert rel(out, ref) <= 1e-4, rel(out, ref)


def test_a_replaced_weight_reaches_openvino(ran):
    """A LoRA changes weights through the session's initializers: OpenVINO compiles the graph with them."""
    changed, _ = ran[1][("lora", "fp32")]
    unchanged, _ = ran[1][("unet", "fp32")]
    assert rel(changed, unchanged) > 1e-2


@pytest.mark.parametrize("name", ["unet", "vae", "lora"])
def test_bf16_is_close_to_pytorch_and_really_bf16(ran, name):
    report, results = ran
    if not report["native_bf16"]:
        pytest.skip("this CPU has no native bf16 (amx_bf16 or avx512_bf16): OpenVINO would emulate it, and "
                    "Automatic never runs it in bf16 here")
    out, ref = results[(name, "bf16")]
    fp32, _ = results[(name, "fp32")]
    assert out.shape == ref.shape
    assert rel(out, ref) <= 5e-2, rel(out, ref)  # bf16 keeps 8 bits of mantissa: about 3 decimal digits
    assert rel(out, fp32) > 1e-4, rel(out, fp32)  # not the fp32 result: the bf16 hint reached OpenVINO
