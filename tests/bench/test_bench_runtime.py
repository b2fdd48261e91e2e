"""A provider timed in another interpreter's child (``bench --ep openvino``): the child protocol on the CPU
provider through this interpreter, the runtime check, and (with ``$ORT_TURBO_OPENVINO_PYTHON``) OpenVINO
end to end."""

import json
import os
import sys

import pytest
import torch

from conftest import tiny_model
from lib_ort.bench.architectures import example_inputs
from lib_ort.bench.runtime import (RUNTIME_PYTHON_ENV, check_runtime, native_bf16, openvino_plan,
                                   openvino_precisions, runtime_python, time_in_runtime)
from lib_ort.bench.timing import rel_err
from lib_ort.cli import main
from lib_ort.errors import OrtTurboError
from lib_ort.export import MODEL_FILE, load_export_info
from lib_ort.sessions import plan_session

OPENVINO_PYTHON = os.environ.get(RUNTIME_PYTHON_ENV)
needs_openvino = pytest.mark.skipif(not OPENVINO_PYTHON, reason=f"${RUNTIME_PYTHON_ENV} is not set (an interpreter "
                                                                "with onnxruntime-openvino)")


def _unet_feeds(folder):
    """The export's inputs for tiny-sd2 (by graph input name) and PyTorch eager's output on them."""
    model = tiny_model("tiny-sd2")
    inputs = example_inputs(model, 2, 8, 8, 77, seed=3)
    with torch.no_grad():
        ref = model(**inputs)
    values = {"sample": inputs["x"], "timestep": inputs["timesteps"].float(), "encoder_hidden_states": inputs["context"]}
    return {n: values[n].numpy() for n in load_export_info(folder)["input_names"]}, ref


def test_the_child_times_a_session_plan_in_another_process_and_returns_its_outputs(export_of):
    """Any plan, any interpreter with onnxruntime: here the CPU provider through this one. The outputs come
    back through the files and match PyTorch; the timings are the child's own; it never imported torch."""
    folder = export_of("tiny-sd2")
    feeds, ref = _unet_feeds(folder)
    result, outputs = time_in_runtime(sys.executable, folder / MODEL_FILE,
                                      plan_session("cpu", intra_op_threads=1).to_dict(), feeds, runs=4, warmup=2)
    assert result["providers"][0] == "CPUExecutionProvider"
    assert len(result["samples_ms"]) == 4 and result["warmup"] == 2
    assert result["min_ms"] <= result["median_ms"] <= result["max_ms"]
    assert result["load_s"] > 0 and result["first_call_s"] > 0
    assert result["peak_rss_mb"] > 20  # an interpreter with onnxruntime and a model loaded
    assert result["imported_torch"] is False  # the runtime interpreter needs no torch
    assert len(outputs) == 1 and outputs[0].shape == tuple(ref.shape)
    assert rel_err(torch.from_numpy(outputs[0]), ref) <= 1e-4


def test_a_relative_runtime_python_is_found_although_the_child_runs_elsewhere(export_of, tmp_path, monkeypatch):
    """``bench --runtime-python .venv-openvino/bin/python``: relative to where the command was given, not to
    the child's own folder (it crashed with FileNotFoundError)."""
    folder = export_of("tiny-sd2")
    feeds, _ = _unet_feeds(folder)
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(sys.executable, tmp_path)
    assert not os.path.isabs(relative)
    result, _ = time_in_runtime(relative, folder / MODEL_FILE, plan_session("cpu", intra_op_threads=1).to_dict(),
                                feeds, runs=1, warmup=0)
    assert result["providers"][0] == "CPUExecutionProvider"
    assert runtime_python(relative) == os.path.abspath(relative)


def test_the_child_reports_why_a_plan_cannot_run(export_of):
    """This interpreter's onnxruntime has no OpenVINO: the child says so, the parent raises it."""
    folder = export_of("tiny-sd2")
    feeds, _ = _unet_feeds(folder)
    with pytest.raises(OrtTurboError, match="OpenVINOExecutionProvider"):
        time_in_runtime(sys.executable, folder / MODEL_FILE, openvino_plan("bf16", 1), feeds, runs=1, warmup=1)
    with pytest.raises(OrtTurboError, match="the inputs file has no sample, timestep, encoder_hidden_states"):  # inputs that do not fit the graph
        time_in_runtime(sys.executable, folder / MODEL_FILE, plan_session("cpu", intra_op_threads=1).to_dict(),
                        {"sample2": feeds["sample"]}, runs=1, warmup=1)


def test_the_runtime_check_names_what_to_install(tmp_path):
    missing = tmp_path / "nope" / "python"
    with pytest.raises(OrtTurboError, match=f"--runtime-python: {missing} does not exist; pip install onnxruntime-openvino"):
        check_runtime(str(missing))
    if "OpenVINOExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("this interpreter's onnxruntime has OpenVINO")
    with pytest.raises(OrtTurboError, match=r"has no onnxruntime with OpenVINOExecutionProvider \(its onnxruntime "
                                            r"[0-9.]+ has [^)]*CPUExecutionProvider\); pip install onnxruntime-openvino in a "
                                            "separate venv and pass its python"):
        check_runtime(sys.executable)


def test_bench_openvino_without_a_capable_runtime_fails_before_any_work(tmp_path, capsys):
    for command in (["bench", "--arch", "tiny-sd2"], ["bench-vae", "--vae", "tiny-ldm"]):
        assert main(["--root", str(tmp_path / "reg"), *command, "--ep", "openvino",
                     "--runtime-python", str(tmp_path / "missing-python")]) == 1
        assert "--runtime-python" in capsys.readouterr().err
        assert not (tmp_path / "reg").exists() or not any((tmp_path / "reg").iterdir())  # nothing exported


def test_precisions_default_to_both_where_the_cpu_has_native_bf16():
    assert openvino_precisions(None, native=True) == ["bf16", "fp32"]
    assert openvino_precisions(None, native=False) == ["fp32"]
    assert openvino_precisions("auto", native=True) == ["bf16"]
    assert openvino_precisions("auto", native=False) == ["fp32"]
    assert openvino_precisions("both", native=False) == ["bf16", "fp32"]
    assert openvino_precisions("fp32", native=True) == ["fp32"]
    with pytest.raises(ValueError, match="auto, bf16, fp32, both"):
        openvino_precisions("fp16", native=True)
    assert native_bf16("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert native_bf16("flags\t\t: fpu avx512f avx512_bf16\n")
    assert not native_bf16("flags\t\t: fpu avx2 avx512f avx512_vnni\n")


def test_the_openvino_plan_sets_the_precision_the_way_the_cpu_plugin_takes_it():
    bf16, fp32 = openvino_plan("bf16", 2), openvino_plan("fp32", 2)
    (name, options), = bf16["providers"][:1]
    assert name == "OpenVINOExecutionProvider" and options["device_type"] == "CPU"
    # a JSON string (a file path fails, and "precision": "BF16" is refused on CPU)
    hint = json.loads(options["load_config"])["CPU"]["INFERENCE_PRECISION_HINT"]
    assert hint == "bf16" and options.get("precision") != "BF16"
    assert fp32["providers"][0][1].get("precision", "FP32") == "FP32" and "bf16" not in json.dumps(fp32)


@needs_openvino
def test_the_openvino_child_refuses_a_session_ort_built_on_the_cpu_provider(export_of):
    """A bad OpenVINO option makes ORT log an error and build a CPU session: refused, never timed."""
    folder = export_of("tiny-sd2")
    feeds, _ = _unet_feeds(folder)
    plan = openvino_plan("fp32", 1)
    plan["providers"][0][1]["precision"] = "BF16"  # "CPU only supports FP32, ACCURACY"
    with pytest.raises(OrtTurboError, match="fell back|fallback"):
        time_in_runtime(OPENVINO_PYTHON, folder / MODEL_FILE, plan, feeds, runs=1, warmup=1)


@needs_openvino
def test_bench_openvino_times_both_precisions_beside_the_cpu_recipe(shared_registry, capsys):
    assert main(["--root", str(shared_registry.root), "bench", "--arch", "tiny-sd2", "--ep", "openvino",
                 "--openvino-precision", "both", "--runs", "3", "--unfused", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["ep"] == "openvino" and result["rel_err"] <= 1e-4  # the CPU recipe, in this process
    runs = result["openvino"]
    assert list(runs) == ["ORT OpenVINO bf16", "ORT OpenVINO fp32"]
    for name, run in runs.items():
        assert run["providers"][0] == "OpenVINOExecutionProvider" and run["own_process"]
        assert run["load_s"] > 0 and run["first_call_s"] > 0 and run["peak_rss_mb"] > 20
        assert run["spread_ms"][0] <= run["median_ms"] <= run["spread_ms"][1] and len(run["samples_ms"]) == 3
        assert run["speedup"] == pytest.approx(result["torch_ms"] / run["median_ms"], rel=0.01)
        assert f"| {name} |" in result["table"]
    assert runs["ORT OpenVINO fp32"]["rel_err"] <= 1e-4
    assert runs["ORT OpenVINO bf16"]["rel_err"] <= 0.1  # bf16: 8 mantissa bits, yet the same picture
    listed = {row.id: row.manifest for row in shared_registry.list()}
    assert listed[result["openvino_artefact"]]["ep"] == "openvino"  # the recipe went through Olive
    assert "timed in its own process" in captured.err
    assert "| ORT cpu recipe |" in captured.err and "| ORT unfused |" in captured.err


@needs_openvino
def test_bench_vae_openvino_reports_pixel_differences_load_and_memory(shared_registry, capsys):
    assert main(["--root", str(shared_registry.root), "bench-vae", "--vae", "tiny-ldm", "--height", "48", "--width",
                 "64", "--ep", "openvino", "--openvino-precision", "both", "--runs", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    runs = result["openvino"]
    assert list(runs) == ["ORT OpenVINO bf16", "ORT OpenVINO fp32"]
    assert runs["ORT OpenVINO fp32"]["max_pixel_diff"] <= 1
    for run in runs.values():
        assert run["providers"][0] == "OpenVINOExecutionProvider"
        assert 0 <= run["mean_pixel_diff"] <= run["max_pixel_diff"] <= 255
        assert run["peak_rss_mb"] > 20 and run["load_s"] > 0
        assert run["speedup"] == pytest.approx(result["decode"][result["baseline"]]["median_ms"] / run["median_ms"],
                                               rel=0.02)
    assert "ORT cpu recipe" in result["decode"] and "| ORT OpenVINO bf16 |" in result["table"]


def test_bench_automatic_names_what_the_webui_would_pick_here():
    """``make bench`` (``--ep automatic``): this venv's plain onnxruntime offers the CPU provider, so that is
    what a default install runs; with an onnxruntime-openvino interpreter beside it, OpenVINO exactly where
    the CPU has native bf16 (the same rule as the WebUI's setting)."""
    from lib_ort.bench.runtime import automatic_provider
    from lib_ort.cpu_features import has_native_bf16, this_cpu_flags

    here = automatic_provider()
    assert here["ep"] == "cpu" and "cpu" in here["offered"] and here["python"] is None
    if OPENVINO_PYTHON:
        beside = automatic_provider(OPENVINO_PYTHON)
        bf16 = has_native_bf16(this_cpu_flags())
        assert "openvino" in beside["offered"] and beside["native_bf16"] == bf16
        assert beside["ep"] == ("openvino" if bf16 else "cpu")
        assert (beside["python"] is not None) == bf16
