"""The runtime package decision table: torch CUDA/cuDNN × OS × installed ONNX Runtime variants."""

import pytest

from lib_ort.runtime_packages import (CUDNN9_REQUIREMENT, Host, choose, decide, freeze_constraints, read_pins,
                                      version_tuple)

WEBUI_PINS = {"protobuf": "3.20.0", "numpy": "1.26.2", "setuptools": "69.5.1"}


def host(os="linux", torch=None, cuda=None, cudnn=None, installed=None, pins=WEBUI_PINS, **kw):
    return Host(os=os, python=(3, 10), torch=torch, torch_cuda=cuda, torch_cudnn=cudnn,
                installed=dict(installed or {}), pins=dict(pins), **kw)


V1101 = dict(torch="2.1.2+cu121", cuda=(12, 1), cudnn=8)   # WebUI v1.10.1's default torch
DEV = dict(torch="2.7.0+cu128", cuda=(12, 8), cudnn=9)      # WebUI dev's default torch


# (case, host, ep, requirement, cuDNN 9 side install)
TABLE = [
    ("v1.10.1 Linux cu121 + cuDNN 8", host(**V1101), "cuda", "onnxruntime-gpu>=1.19,<1.27", True),
    ("v1.10.1 Windows cu121 + cuDNN 8", host(os="windows", **V1101), "cuda", "onnxruntime-gpu>=1.19,<1.27", True),
    ("dev cu128 + cuDNN 9", host(**DEV), "cuda", "onnxruntime-gpu>=1.19,<1.27", False),
    ("cu118 + cuDNN 8", host(torch="2.0.1+cu118", cuda=(11, 8), cudnn=8), "cuda", "onnxruntime-gpu>=1.17,<1.19", False),
    ("CPU torch, Linux", host(torch="2.1.2+cpu"), "cpu", "onnxruntime>=1.17,<1.27", False),
    ("macOS", host(os="darwin", torch="2.1.2"), "cpu", "onnxruntime>=1.17,<1.27", False),
    ("Windows without NVIDIA", host(os="windows", torch="2.1.2+cpu"), "dml", "onnxruntime-directml>=1.17,<1.27", False),
    ("Windows torch-directml", host(os="windows", torch="2.0.0", torch_directml=True), "dml",
     "onnxruntime-directml>=1.17,<1.27", False),
    ("ROCm", host(torch="2.1.2+rocm5.6", torch_hip="5.6"), "cpu", "onnxruntime>=1.17,<1.27", False),
    ("no torch", host(), "cpu", "onnxruntime>=1.17,<1.27", False),
    ("no protobuf pin, protobuf 5", host(torch="2.5.0+cpu", pins={}, installed={"protobuf": "5.29.0"}), "cpu",
     "onnxruntime>=1.17", False),
    ("cu130 without a protobuf pin", host(torch="2.9.0+cu130", cuda=(13, 0), cudnn=9, pins={}), "cuda",
     "onnxruntime-gpu>=1.27", False),
]


@pytest.mark.parametrize("case,h,ep,requirement,side", TABLE, ids=[t[0] for t in TABLE])
def test_choice_table(case, h, ep, requirement, side):
    choice = choose(h)
    assert (choice.ep, choice.requirement, choice.cudnn9_side) == (ep, requirement, side)
    assert choice.reasons  # every decision says why


def test_protobuf_pin_caps_every_package_below_1_27():
    for _case, h, _ep, requirement, _side in TABLE:
        if h.pins.get("protobuf") == "3.20.0":
            assert choose(h).high is not None and choose(h).high <= (1, 27), requirement


def test_cuda13_with_webui_protobuf_pin_is_unavailable_and_says_why():
    d = decide(host(torch="2.9.0+cu130", cuda=(13, 0), cudnn=9), python="/w/venv/bin/python")
    assert d.action == "unavailable" and not d.needs_pip
    assert any("protobuf" in r for r in d.reasons)
    assert any('"/w/venv/bin/python" -m pip install' in a for a in d.advice)


def test_fresh_install_v1101_installs_gpu_runtime_and_side_cudnn9():
    d = decide(host(**V1101))
    assert d.action == "install"
    assert d.install == ("onnxruntime-gpu>=1.19,<1.27",)
    assert d.side == (CUDNN9_REQUIREMENT,)
    assert not d.uninstall


def test_relaunch_with_everything_in_place_needs_no_pip():
    d = decide(host(installed={"onnxruntime-gpu": "1.26.0"}, side_cudnn9="9.8.0.87", **V1101))
    assert d.action == "ok" and not d.needs_pip
    d = decide(host(torch="2.1.2+cpu", installed={"onnxruntime": "1.26.0"}))
    assert d.action == "ok" and not d.needs_pip


def test_gpu_runtime_present_but_side_cudnn_missing_installs_only_cudnn():
    d = decide(host(installed={"onnxruntime-gpu": "1.26.0"}, **V1101))
    assert d.action == "install" and d.install == () and d.side == (CUDNN9_REQUIREMENT,)


@pytest.mark.parametrize("installed,keep", [
    ({"onnxruntime-gpu": "1.20.1"}, "onnxruntime-gpu"),       # CPU choice: a GPU build has the CPU provider
    ({"onnxruntime-directml": "1.24.4"}, "onnxruntime-directml"),
    ({"onnxruntime": "1.32.0"}, "onnxruntime"),               # newer than we would pick: still serves CPU
    ({"onnxruntime-openvino": "1.22.0"}, "onnxruntime-openvino"),
])
def test_cpu_choice_keeps_any_variant_that_has_the_cpu_provider(installed, keep):
    d = decide(host(torch="2.1.2+cpu", installed=installed))
    assert d.action == "ok" and d.keep == keep and not d.needs_pip


def test_cuda_choice_keeps_another_extensions_matching_gpu_build():
    d = decide(host(installed={"onnxruntime-gpu": "1.22.0"}, **DEV))
    assert d.action == "ok" and d.keep == "onnxruntime-gpu"


@pytest.mark.parametrize("installed,words", [
    ({"onnxruntime": "1.22.0"}, "has no CUDA provider"),                      # ReActor's CPU package
    ({"onnxruntime-gpu": "1.18.1"}, "does not link the CUDA 12"),            # CUDA 11 build
    ({"onnxruntime-gpu": "1.29.0"}, "does not link the CUDA 12"),            # CUDA 13 build
    ({"onnxruntime-gpu": "1.16.3"}, "older than 1.17"),
    ({"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0"}, "installed together"),
    ({"ort-nightly-gpu": "1.17.0.dev20231205004"}, "does not link the CUDA 12"),
])
def test_conflicts_are_reported_with_commands_and_nothing_is_removed(installed, words):
    d = decide(host(**DEV, installed=installed), python="C:/webui/venv/Scripts/python.exe")
    assert d.action == "conflict" and not d.needs_pip
    text = "\n".join(d.reasons + d.advice)
    assert words in text
    assert '"C:/webui/venv/Scripts/python.exe" -m pip uninstall -y ' + " ".join(installed) in text
    assert 'install "onnxruntime-gpu>=1.19,<1.27"' in text
    assert "ORT_TURBO_REPLACE_ORT=1" in text


def test_replace_opt_in_uninstalls_then_installs():
    d = decide(host(**DEV, installed={"onnxruntime": "1.22.0"}), replace=True)
    assert d.action == "install"
    assert d.uninstall == ("onnxruntime",) and d.install == ("onnxruntime-gpu>=1.19,<1.27",)


def test_dml_choice_with_cpu_package_installed_is_a_conflict():
    d = decide(host(os="windows", torch="2.1.2+cpu", installed={"onnxruntime": "1.22.0"}))
    assert d.action == "conflict" and "has no DML provider" in "\n".join(d.reasons)


def test_read_pins_handles_crlf_comments_and_unpinned_lines(tmp_path):
    f = tmp_path / "requirements_versions.txt"
    f.write_bytes(b"setuptools==69.5.1  # temp fix\r\nprotobuf==3.20.0\r\ntorch\r\nPillow==9.5.0\r\n")
    assert read_pins(f) == {"setuptools": "69.5.1", "protobuf": "3.20.0", "pillow": "9.5.0"}
    assert read_pins(tmp_path / "missing.txt") == {}


def test_freeze_constraints_pin_everything_but_the_released_package():
    lines = freeze_constraints({"protobuf": "3.20.0", "torch": "2.1.2+cu121", "onnxruntime-gpu": "1.20.0",
                                "weird": "not a version"}, release=("onnxruntime-gpu",))
    assert lines == ["protobuf==3.20.0", "torch==2.1.2+cu121"]


def test_version_tuple():
    assert version_tuple("2.1.2+cu121") == (2, 1, 2)
    assert version_tuple("1.17.0.dev20231205004")[:3] == (1, 17, 0)
    assert version_tuple(None) == ()
