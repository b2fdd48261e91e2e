"""The provider table: what every other module reads about a provider, checked against ONNX Runtime itself
and against the modules that read it."""

import subprocess
import sys
from pathlib import Path

import pytest

from lib_ort.providers import KEYS, ONNXRUNTIME_DISTRIBUTIONS, PROVIDERS, label, provider, served_by
from lib_ort.recipes import RECIPES, VAE_RECIPES

REPO = Path(__file__).resolve().parents[1]


def test_every_ort_name_is_one_onnxruntime_knows():
    import onnxruntime

    known = set(onnxruntime.get_all_providers())  # every provider ORT has, built into this wheel or not
    assert {p.ort_name for p in PROVIDERS} <= known


def test_keys_labels_and_names_are_each_unique():
    for field in ("key", "label", "ort_name"):
        values = [getattr(p, field) for p in PROVIDERS]
        assert len(set(values)) == len(values), field


def test_every_provider_has_its_recipes_and_nothing_else_has_one():
    assert set(RECIPES) == set(KEYS)
    assert set(VAE_RECIPES) == {(p.key, precision) for p in PROVIDERS for precision in p.vae_precisions}
    for p in PROVIDERS:
        assert p.precision in ("fp16", "fp32") and set(p.vae_precisions) <= {"fp16", "fp32"}
        assert (RECIPES[p.key]["provider"], RECIPES[p.key]["device"]) == (p.ort_name, p.device)


def test_every_onnxruntime_package_serves_the_cpu_and_gpu_providers_need_their_own():
    for name in ONNXRUNTIME_DISTRIBUTIONS:
        assert "cpu" in served_by(name), name
    assert served_by("onnxruntime") == {"cpu"}
    assert served_by("torch") == frozenset()  # not an ONNX Runtime at all
    for p in PROVIDERS:
        assert p.packages <= set(ONNXRUNTIME_DISTRIBUTIONS), p.key


def test_an_unknown_key_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown execution provider 'rocm'; choose one of: cuda, tensorrt, dml, openvino, cpu"):
        provider("rocm")
    with pytest.raises(ValueError, match="unknown execution provider"):
        provider("CUDA")  # a label is not a key


def test_the_table_imports_nothing_heavy():
    """install.py reads it (through runtime_packages) before the WebUI has torch or onnxruntime loaded."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import lib_ort.runtime_packages;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'numpy', 'lib_ort')))")
    done = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['lib_ort', 'lib_ort.providers', 'lib_ort.runtime_packages']"


def test_a_user_reads_the_label_and_an_unknown_key_stays_readable():
    assert [label(p.key) for p in PROVIDERS] == ["CUDA", "TensorRT", "DirectML", "OpenVINO (CPU)", "CPU"]
    assert label("rocm") == "rocm"  # a manifest from another version still lists


def test_automatic_ranks_the_offered_providers_from_the_table():
    from lib_ort.providers import automatic

    assert automatic({"cpu"}, native_bf16=True) == "cpu"
    assert automatic({"cpu", "tensorrt"}, native_bf16=True) == "cpu"  # TensorRT only when chosen
    assert automatic({"cpu", "openvino"}, native_bf16=True) == "openvino"
    assert automatic({"cpu", "openvino"}, native_bf16=False) == "cpu"  # OpenVINO fp32 is not faster
    assert automatic({"cpu", "openvino", "dml"}, native_bf16=True) == "dml"
    assert automatic({"cpu", "dml", "cuda", "tensorrt"}, native_bf16=False) == "cuda"
    assert automatic(set(), native_bf16=False) == "cpu"
