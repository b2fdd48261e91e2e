"""The runtime package decision table: torch CUDA/cuDNN × OS × installed ONNX Runtime variants,
and what install_runtime.run does with a decision (a recording pip stands in for the real one)."""

import io
import itertools
import re
from pathlib import Path

import pytest

from lib_ort import install_runtime
from lib_ort.install_layout import Layout
from lib_ort.providers import ONNXRUNTIME_DISTRIBUTIONS, served_by
from lib_ort.runtime_packages import (CUDNN9_REQUIREMENT, NEW_ORT_REQUIREMENTS, Host, choose, decide,
                                      freeze_constraints, normalize, nvidia_driver_visible, read_pins, satisfies,
                                      unmet_requirements, version_tuple)

DATA = Path(__file__).resolve().parent / "data" / "webui-host"
WEBUI_PINS = {"protobuf": "3.20.0", "numpy": "1.26.2", "setuptools": "69.5.1"}


def host(os="linux", torch=None, cuda=None, cudnn=None, installed=None, pins=WEBUI_PINS, python=(3, 10), **kw):
    return Host(os=os, python=python, torch=torch, torch_cuda=cuda, torch_cudnn=cudnn,
                installed=dict(installed or {}), pins=dict(pins), **kw)


V1101 = dict(torch="2.1.2+cu121", cuda=(12, 1), cudnn=8)   # WebUI v1.10.1's default torch
DEV = dict(torch="2.7.0+cu128", cuda=(12, 8), cudnn=9)      # WebUI dev's default torch
CU130 = dict(torch="2.9.0+cu130", cuda=(13, 0), cudnn=9, python=(3, 11))
CPU_RANGE = "onnxruntime>=1.17,<1.27"


# (case, host, ep, requirement, cuDNN 9 side install, --no-deps)
TABLE = [
    ("v1.10.1 Linux cu121 + cuDNN 8", host(**V1101), "cuda", "onnxruntime-gpu>=1.19,<1.27", True, False),
    ("v1.10.1 Windows cu121 + cuDNN 8", host(os="windows", **V1101), "cuda", "onnxruntime-gpu>=1.19,<1.27", True,
     False),
    ("dev cu128 + cuDNN 9", host(**DEV), "cuda", "onnxruntime-gpu>=1.19,<1.27", False, False),
    ("cu118 + cuDNN 8", host(torch="2.0.1+cu118", cuda=(11, 8), cudnn=8), "cuda", "onnxruntime-gpu>=1.17,<1.19",
     False, False),
    ("cu130 + the protobuf 3.20.0 pin: the no-deps route", host(**CU130), "cuda", "onnxruntime-gpu>=1.27", False, True),
    ("cu130 without a protobuf pin", host(**CU130, pins={}), "cuda", "onnxruntime-gpu>=1.27", False, False),
    ("cu130 on Python 3.10 (no CUDA 13 wheel)", host(**dict(CU130, python=(3, 10))), "cpu", CPU_RANGE, False, False),
    ("cu102 (no GPU build on PyPI)", host(torch="1.12.1+cu102", cuda=(10, 2), cudnn=7), "cpu", CPU_RANGE, False,
     False),
    ("cu130, no NVIDIA driver", host(**CU130, nvidia_driver=False), "cpu", CPU_RANGE, False, False),
    ("cu121 + cuDNN 8, no NVIDIA driver", host(**V1101, nvidia_driver=False), "cpu", CPU_RANGE, False, False),
    ("cu121, NVIDIA driver seen", host(**V1101, nvidia_driver=True), "cuda", "onnxruntime-gpu>=1.19,<1.27", True,
     False),
    ("CPU torch, Linux", host(torch="2.1.2+cpu"), "cpu", CPU_RANGE, False, False),
    ("macOS", host(os="darwin", torch="2.1.2"), "cpu", CPU_RANGE, False, False),
    ("Windows without NVIDIA", host(os="windows", torch="2.1.2+cpu"), "dml", "onnxruntime-directml>=1.17,<1.27",
     False, False),
    ("Windows torch-directml", host(os="windows", torch="2.0.0", torch_directml=True), "dml",
     "onnxruntime-directml>=1.17,<1.27", False, False),
    ("ROCm", host(torch="2.1.2+rocm5.6", torch_hip="5.6"), "cpu", CPU_RANGE, False, False),
    ("no torch", host(), "cpu", CPU_RANGE, False, False),
    ("no protobuf pin, protobuf 5", host(torch="2.5.0+cpu", pins={}, installed={"protobuf": "5.29.0"}), "cpu",
     "onnxruntime>=1.17", False, False),
]


@pytest.mark.parametrize("case,h,ep,requirement,side,no_deps", TABLE, ids=[t[0] for t in TABLE])
def test_choice_table(case, h, ep, requirement, side, no_deps):
    choice = choose(h)
    assert (choice.ep, choice.requirement, choice.cudnn9_side, choice.no_deps) == (ep, requirement, side, no_deps)
    assert choice.reasons  # every decision says why


def test_protobuf_pin_caps_every_package_below_1_27_except_the_no_deps_route():
    for _case, h, _ep, requirement, _side, no_deps in TABLE:
        if h.pins.get("protobuf") == "3.20.0":
            high = choose(h).high
            assert (high is None) if no_deps else (high is not None and high <= (1, 27)), requirement


HOSTS = [host(os=os_name, torch=torch, cuda=cuda, cudnn=cudnn, python=python, pins=pins, nvidia_driver=driver, **extra)
         for os_name, (torch, cuda, cudnn, extra), python, pins, driver in itertools.product(
             ("linux", "windows", "darwin"),
             [(None, None, None, {}), ("2.1.2+cpu", None, None, {}),
              ("2.1.2+rocm5.6", None, None, {"torch_hip": "5.6"}), ("2.0.0", None, None, {"torch_directml": True}), ("1.12.1+cu102", (10, 2), 7, {}),
              ("2.0.1+cu118", (11, 8), 8, {}), ("2.1.2+cu121", (12, 1), 8, {}), ("2.7.0+cu128", (12, 8), 9, {}),
              ("2.9.0+cu130", (13, 0), 9, {}), ("3.0.0+cu140", (14, 0), 9, {})],
             ((3, 10), (3, 11), (3, 12)), (WEBUI_PINS, {}, {"protobuf": "3.20.0", "numpy": "1.19.0"}),
             (None, True, False))]


def test_nothing_fits_is_never_an_outcome():
    """Every torch build × OS × Python × pins × driver gets a runtime that has the CPU provider."""
    routes = set()
    for h in HOSTS:
        d = decide(h)
        assert d.action == "install" and d.install == (d.choice.requirement,) and d.choice.reasons, h
        assert "cpu" in served_by(d.choice.package) and d.choice.ep in served_by(d.choice.package), h
        if h.nvidia_driver is False:
            assert d.choice.ep != "cuda" and not d.side, h
        # the no-deps route never names protobuf or a package the WebUI pins or has
        assert d.no_deps == d.choice.no_deps
        for requirement in d.deps:
            name = normalize(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))
            assert name != "protobuf" and name not in h.pins and name not in h.installed, (requirement, h)
        if d.no_deps:
            assert h.protobuf_limit() and h.torch_cuda[0] >= 13 and h.python >= (3, 11), h
        routes.add((d.choice.package, d.no_deps))
    assert routes == {("onnxruntime", False), ("onnxruntime-gpu", False), ("onnxruntime-gpu", True),
                      ("onnxruntime-directml", False)}


def test_cuda13_with_the_protobuf_pin_takes_the_no_deps_route_with_the_absent_requirements():
    pins = read_pins(DATA / "webui-v1.10.1-requirements_versions.txt")
    installed = {**pins, "packaging": "24.2", "torch": "2.9.0+cu130"}  # numpy 1.26.2 and protobuf 3.20.0 pinned
    d = decide(host(**CU130, pins=pins, installed=installed), python="/w/venv/bin/python")
    assert d.action == "install" and d.no_deps
    assert d.install == ("onnxruntime-gpu>=1.27",) and d.deps == ("flatbuffers",)
    assert any("--no-deps" in r and "protobuf 3.20.0" in r for r in d.reasons)


def test_no_deps_route_gives_way_to_the_cpu_runtime_when_a_requirement_would_change_a_pin():
    h = host(**CU130, pins={"protobuf": "3.20.0", "numpy": "1.19.0"}, installed={"numpy": "1.19.0"})
    choice = choose(h)
    assert choice.requirement == CPU_RANGE and not choice.no_deps
    assert any("numpy>=1.21.6 (the WebUI has 1.19.0)" in r for r in choice.reasons)


def test_fresh_install_v1101_installs_gpu_runtime_and_side_cudnn9():
    d = decide(host(**V1101))
    assert d.action == "install"
    assert d.install == ("onnxruntime-gpu>=1.19,<1.27",)
    assert d.side == (CUDNN9_REQUIREMENT,)
    assert not d.uninstall and not d.no_deps
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
                                "weird": "not a version"}, pins={"protobuf": "3.19.0", "lark": "1.1.2"},
                               release=("onnxruntime-gpu",))
    assert lines == ["lark==1.1.2", "protobuf==3.20.0", "torch==2.1.2+cu121"]  # installed wins over the pin


def test_version_tuple():
    assert version_tuple("2.1.2+cu121") == (2, 1, 2)
    assert version_tuple("1.17.0.dev20231205004")[:3] == (1, 17, 0)
    assert version_tuple(None) == ()


@pytest.mark.parametrize("version,specifier,ok", [
    ("1.26.2", ">=1.21.6", True), ("1.19.0", ">=1.21.6", False), ("3.20.0", ">=4.25.8", False),
    ("9.1.0", "~=9.0", True), ("10.0", "~=9.0", False), ("1.2.3", "==1.2.*", True), ("1.3.0", "==1.2.*", False),
    ("1.0", ">=1,<2,!=1.0", False), ("2.1.2+cu121", "<2.2", True), ("1.0", "", True), ("1.0", "@ file:x", False),
])
def test_satisfies(version, specifier, ok):
    assert satisfies(version, specifier) is ok


def test_unmet_requirements_skip_extras_and_markers_and_tell_absent_from_clashing():
    h = host(installed={"numpy": "1.26.2", "packaging": "21.0"}, pins={"numpy": "1.26.2", "lark": "1.1.2"})
    absent, clashing = unmet_requirements(
        ["flatbuffers", "numpy>=1.21.6", "packaging>=22", "lark", "sympy; extra == \"symbolic\"",
         "pywin32; sys_platform == \"win32\""], h)
    assert absent == ("flatbuffers",) and clashing == ("packaging>=22 (the WebUI has 21.0)",)


@pytest.mark.parametrize("os_name,files,on_path,seen", [
    ("linux", (), False, False),
    ("linux", ("/proc/driver/nvidia/version",), False, True),
    ("linux", ("/usr/lib/wsl/lib/libcuda.so.1",), False, True),   # WSL2: no /proc/driver/nvidia
    ("linux", (), True, True),
    ("windows", ("D:/Win/System32/nvcuda.dll",), False, True),
    ("windows", ("C:/Windows/System32/nvcuda.dll",), False, False),  # SystemRoot is D:/Win here
    ("darwin", (), True, False),
])
def test_nvidia_driver_visible_reads_paths_only(os_name, files, on_path, seen):
    assert nvidia_driver_visible(os_name, environ={"SystemRoot": "D:/Win"}, exists=lambda p: p in files,
                                 which=lambda name: "/usr/bin/" + name if on_path else None) is seen


# ---------------------------------------------------------------------------------------------
# install_runtime.run with a recording pip

#: What the recording pip "installs" for a requirement: version, and the requirements pip would add with it.
INDEX = {"onnxruntime-gpu": ("1.29.0", NEW_ORT_REQUIREMENTS), "onnxruntime": ("1.26.0", ("flatbuffers", "numpy",
         "packaging", "protobuf")), "flatbuffers": ("25.9.23", ()), "packaging": ("25.0", ())}
WEBUI_INSTALLED = {**read_pins(DATA / "webui-v1.10.1-requirements_versions.txt"), "packaging": "24.2",
                   "torch": "2.9.0+cu130"}


class RecordingPip:
    """Stands in for launch.run_pip: records each call, reads the constraints file it names, and
    "installs" into ``installed`` what the call asks for (with its requirements unless --no-deps)."""

    def __init__(self, installed: dict, fail: bool = False):
        self.installed, self.requires, self.fail = dict(installed), {}, fail
        self.calls, self.constraints = [], []

    def __call__(self, args: str, desc: str) -> None:
        self.calls.append(args)
        found = re.search(r'-c "([^"]+)"', args)
        self.constraints.append(dict(line.split("==") for line in Path(found.group(1)).read_text().split()) if found
                                else None)
        if self.fail:
            raise RuntimeError("pip install failed with exit code 1 (no network)")
        named = re.findall(r'"([^"]+)"', args.split(" -c ")[0])
        todo = [normalize(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in named]
        while todo:
            name = todo.pop()
            if name in self.installed:
                continue
            version, requires = INDEX[name]
            self.installed[name] = version
            self.requires[name] = requires
            if "--no-deps" not in args:
                todo += [normalize(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requires]

    def host(self, base: Host) -> Host:
        """The next start's Host: what is installed now, with the runtime's own metadata."""
        return Host(**{**base.__dict__, "installed": dict(self.installed),
                       "requires": {n: r for n, r in self.requires.items() if n in ONNXRUNTIME_DISTRIBUTIONS}})

    def named(self, i: int) -> set:
        """Distributions a call names outside its constraints file."""
        return {normalize(re.match(r"[A-Za-z0-9._-]+", r).group(0))
                for r in re.findall(r'"([^"]+)"', self.calls[i].split(" -c ")[0])}


def _run(h: Host, pip, tmp_path, **kw):
    out = io.StringIO()
    decision = install_runtime.run(pip, python="/w/venv/bin/python", layout=Layout(tmp_path / "data"), out=out,
                                   environ={}, host=h, **kw)
    return decision, out.getvalue()


def test_no_deps_route_installs_twice_under_constraints_then_never_calls_pip_again(tmp_path):
    pins = read_pins(DATA / "webui-v1.10.1-requirements_versions.txt")
    first_host = host(**CU130, pins=pins, installed=WEBUI_INSTALLED, nvidia_driver=True)
    pip = RecordingPip(WEBUI_INSTALLED)
    decision, out = _run(first_host, pip, tmp_path)
    assert decision.action == "install" and "could not install" not in out, out
    assert len(pip.calls) == 2
    assert pip.calls[0].startswith('install "flatbuffers" -c ')
    assert pip.calls[1].startswith('install --no-deps "onnxruntime-gpu>=1.27" -c ')
    for i, constraints in enumerate(pip.constraints):
        # every pin (and every installed package) is held at its version; protobuf stays 3.20.0
        assert {name: constraints.get(name) for name in pins} == {n: WEBUI_INSTALLED[n] for n in pins}
        assert constraints["protobuf"] == "3.20.0" and "onnxruntime-gpu" not in constraints
        assert not (pip.named(i) & (set(pins) | {"protobuf"})), pip.calls[i]
    assert {n: pip.installed[n] for n in pins} == {n: WEBUI_INSTALLED[n] for n in pins}  # pins unchanged
    assert set(pip.installed) - set(WEBUI_INSTALLED) == {"onnxruntime-gpu", "flatbuffers"}

    # the next start: everything in place, no pip call
    again = RecordingPip(pip.installed)
    decision, out = _run(pip.host(first_host), again, tmp_path)
    assert decision.action == "ok" and again.calls == [], out
    assert "ONNX Runtime ready: onnxruntime-gpu 1.29.0 for cuda" in out


def test_normal_route_installs_once_then_never_calls_pip_again(tmp_path):
    pins = read_pins(DATA / "webui-v1.10.1-requirements_versions.txt")
    first_host = host(torch="2.1.2+cpu", pins=pins, installed={**WEBUI_INSTALLED, "torch": "2.1.2+cpu"})
    pip = RecordingPip(first_host.installed)
    decision, out = _run(first_host, pip, tmp_path)
    assert pip.calls and len(pip.calls) == 1 and pip.calls[0].startswith(f'install "{CPU_RANGE}" -c ')
    assert pip.constraints[0]["protobuf"] == "3.20.0" and pip.constraints[0]["numpy"] == "1.26.2"
    again = RecordingPip(pip.installed)
    decision, out = _run(pip.host(first_host), again, tmp_path)
    assert decision.action == "ok" and again.calls == [], out


def test_a_runtime_installed_without_its_requirements_gets_only_those(tmp_path):
    h = host(**CU130, installed={**WEBUI_INSTALLED, "onnxruntime-gpu": "1.30.0"}, nvidia_driver=True,
             requires={"onnxruntime-gpu": NEW_ORT_REQUIREMENTS + ("sympy; extra == \"symbolic\"",)})
    pip = RecordingPip(h.installed)
    decision, out = _run(h, pip, tmp_path)
    assert decision.keep == "onnxruntime-gpu" and decision.install == () and decision.deps == ("flatbuffers",)
    assert len(pip.calls) == 1 and pip.named(0) == {"flatbuffers"}, pip.calls


def test_a_failed_install_is_reported_and_the_runtime_is_not_installed_without_its_requirements(tmp_path):
    pip = RecordingPip(WEBUI_INSTALLED, fail=True)
    decision, out = _run(host(**CU130, installed=WEBUI_INSTALLED, nvidia_driver=True), pip, tmp_path)
    assert len(pip.calls) == 1 and "could not install" in out and "no network" in out
    assert "The WebUI starts anyway" in out


GPU_WORDS = re.compile(r"cuda|cudnn|nvidia|gpu|directml|tensorrt", re.I)


@pytest.mark.parametrize("torch_build", [dict(CU130), dict(V1101), dict(DEV)])
def test_a_cuda_torch_without_a_gpu_says_so_in_one_line_and_gives_no_gpu_advice(tmp_path, torch_build):
    h = host(**torch_build, installed={"numpy": "1.26.2", "protobuf": "3.20.0"}, nvidia_driver=False)
    pip = RecordingPip(h.installed)
    decision, out = _run(h, pip, tmp_path)
    assert decision.choice.package == "onnxruntime" and pip.calls[0].startswith(f'install "{CPU_RANGE}"')
    lines = [line for line in out.splitlines() if GPU_WORDS.search(line)]
    assert len(lines) == 1 and "no NVIDIA driver" in lines[0] and f"CPU runtime {CPU_RANGE}" in lines[0], out
    again = RecordingPip(pip.installed)
    _, out = _run(pip.host(h), again, tmp_path)
    assert again.calls == [] and not GPU_WORDS.search(out), out
    # a conflict on such a machine (an ONNX Runtime too old) advises no GPU package either
    d = decide(host(**torch_build, installed={"onnxruntime": "1.16.3"}, nvidia_driver=False))
    assert d.action == "conflict" and not GPU_WORDS.search("\n".join(d.advice))
