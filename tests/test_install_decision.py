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
from lib_ort.runtime_packages import (CUDNN9_REQUIREMENT, MIN_ORT, NEW_ORT_REQUIREMENTS, RUNTIME_ENV, Host, choose,
                                      decide, freeze_constraints, interpreter_machine, normalize,
                                      nvidia_driver_visible, read_pins, satisfies, unmet_requirements, version_tuple)

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
         "packaging", "protobuf")), "flatbuffers": ("25.9.23", ()), "packaging": ("25.0", ()),
         "onnxruntime-openvino": ("1.24.1", ("flatbuffers", "numpy>=1.21.6", "packaging", "protobuf", "sympy")),
         "sympy": ("1.14.0", ("mpmath",)), "mpmath": ("1.3.0", ())}
WEBUI_INSTALLED = {**read_pins(DATA / "webui-v1.10.1-requirements_versions.txt"), "packaging": "24.2",
                   "torch": "2.9.0+cu130"}


class RecordingPip:
    """Stands in for launch.run_pip: records each call, reads the constraints file it names, and
    "installs" into ``installed`` what the call asks for (with its requirements unless --no-deps),
    removes what ``uninstall`` names; ``download`` changes nothing. ``fail``: every call fails, or
    those for which ``fail(args)`` is true."""

    def __init__(self, installed: dict, fail=False):
        self.installed, self.requires, self.fail = dict(installed), {}, fail
        self.calls, self.constraints = [], []

    def __call__(self, args: str, desc: str) -> None:
        self.calls.append(args)
        found = re.search(r'-c "([^"]+)"', args)
        self.constraints.append(dict(line.split("==") for line in Path(found.group(1)).read_text().split()) if found
                                else None)
        if self.fail is True or (callable(self.fail) and self.fail(args)):
            raise RuntimeError(f"pip {args.split()[0]} failed with exit code 1 (no network)")
        if args.startswith("uninstall -y "):
            for name in args.split()[2:]:
                self.installed.pop(normalize(name))
            return
        if args.startswith("download "):
            return
        named = re.findall(r'"([^"]+)"', args.split(" -c ")[0].split(" --no-index")[0])
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


def _run(h: Host, pip, tmp_path, environ=None, **kw):
    out = io.StringIO()
    decision = install_runtime.run(pip, python="/w/venv/bin/python", layout=Layout(tmp_path / "data"), out=out,
                                   environ=environ or {}, host=h, **kw)
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


# ---------------------------------------------------------------------------------------------
# The user's request ORT_TURBO_RUNTIME=openvino

OV_RANGE = "onnxruntime-openvino>=1.23,<1.27"
CPU_TORCH = dict(torch="2.1.2+cpu")


def test_the_openvino_row_does_not_raise_the_floor_of_the_default_packages():
    assert MIN_ORT == (1, 17)  # the OpenVINO row's min_ort (1.23) applies to onnxruntime-openvino only


# (case, host, package chosen, requirement, action, uninstalled, words of the one line that says why not)
REQUESTS = [
    ("CPU torch, nothing installed", host(**CPU_TORCH), "onnxruntime-openvino", OV_RANGE, "install", (), None),
    ("CPU torch, the plain CPU runtime", host(**CPU_TORCH, installed={"onnxruntime": "1.26.0"}),
     "onnxruntime-openvino", OV_RANGE, "install", ("onnxruntime",), None),
    ("CPU torch, onnxruntime-openvino in place", host(**CPU_TORCH, installed={"onnxruntime-openvino": "1.24.1"}),
     "onnxruntime-openvino", OV_RANGE, "ok", (), None),
    ("onnxruntime-openvino above the cap still serves", host(**CPU_TORCH, installed={"onnxruntime-openvino": "1.28.0"}),
     "onnxruntime-openvino", OV_RANGE, "ok", (), None),
    ("an onnxruntime-openvino too old for the provider is upgraded in place",
     host(**CPU_TORCH, installed={"onnxruntime-openvino": "1.22.0"}), "onnxruntime-openvino", OV_RANGE, "install",
     (), None),
    ("both CPU variants at once: both go", host(**CPU_TORCH, installed={"onnxruntime": "1.26.0",
                                                                         "onnxruntime-openvino": "1.24.1"}),
     "onnxruntime-openvino", OV_RANGE, "install", ("onnxruntime", "onnxruntime-openvino"), None),
    ("Windows, CPU torch (the table's DirectML)", host(os="windows", **CPU_TORCH), "onnxruntime-openvino", OV_RANGE,
     "install", (), None),
    ("CUDA torch, no NVIDIA driver", host(**V1101, nvidia_driver=False, installed={"onnxruntime": "1.26.0"}),
     "onnxruntime-openvino", OV_RANGE, "install", ("onnxruntime",), None),
    ("no protobuf pin: no cap", host(**CPU_TORCH, pins={}), "onnxruntime-openvino", "onnxruntime-openvino>=1.23",
     "install", (), None),
    ("CUDA torch with a driver", host(**V1101, nvidia_driver=True), "onnxruntime-gpu", "onnxruntime-gpu>=1.19,<1.27",
     "install", (), "runs on an NVIDIA GPU"),
    ("torch-directml", host(os="windows", torch="2.0.0", torch_directml=True), "onnxruntime-directml",
     "onnxruntime-directml>=1.17,<1.27", "install", (), "torch-directml runs on the GPU"),
    ("a GPU runtime installed on a CPU machine", host(**CPU_TORCH, installed={"onnxruntime-gpu": "1.22.0"}),
     "onnxruntime", CPU_RANGE, "ok", (), "onnxruntime-gpu 1.22.0 is installed"),
    ("onnxruntime-directml on Windows", host(os="windows", **CPU_TORCH, installed={"onnxruntime-directml": "1.24.4"}),
     "onnxruntime-directml", "onnxruntime-directml>=1.17,<1.27", "ok", (), "onnxruntime-directml 1.24.4 is installed"),
    ("macOS (no wheel)", host(os="darwin", machine="arm64", torch="2.1.2"), "onnxruntime", CPU_RANGE, "install", (),
     "x86-64 Linux and Windows only, not darwin arm64"),
    ("Linux ARM (no wheel)", host(machine="arm64", **CPU_TORCH), "onnxruntime", CPU_RANGE, "install", (),
     "not linux arm64"),
    ("Windows ARM (no wheel)", host(os="windows", machine="arm64", **CPU_TORCH), "onnxruntime-directml",
     "onnxruntime-directml>=1.17,<1.27", "install", (), "not windows arm64"),
]


@pytest.mark.parametrize("case,h,package,requirement,action,uninstall,declined", REQUESTS,
                         ids=[r[0] for r in REQUESTS])
def test_openvino_request_table(case, h, package, requirement, action, uninstall, declined):
    d = decide(h, runtime="openvino")
    assert (d.choice.package, d.choice.requirement, d.action, d.uninstall) == (package, requirement, action, uninstall)
    if declined:
        assert declined in d.choice.declined and d.choice.declined.startswith(f"{RUNTIME_ENV}=openvino not followed")
        assert d.choice.declined in d.reasons
        # declined: exactly the decision without the request
        usual = decide(h)
        assert (d.action, d.install, d.uninstall, d.side, d.keep) == (usual.action, usual.install, usual.uninstall,
                                                                      usual.side, usual.keep)
    else:
        assert not d.choice.declined and d.choice.ep == "openvino"
        assert d.install == ((requirement,) if action == "install" else ())


def test_openvino_request_over_every_host_installs_openvino_on_cpu_machines_and_changes_nothing_elsewhere():
    chosen = 0
    for h in HOSTS:
        for machine in ("x86_64", "arm64"):
            hm = Host(**{**h.__dict__, "machine": machine})
            d, usual = decide(hm, runtime="openvino"), decide(hm)
            cpu_machine = usual.choice.ep == "cpu" or (usual.choice.ep == "dml" and not hm.torch_directml)
            if machine == "x86_64" and hm.os in ("linux", "windows") and cpu_machine:
                assert d.choice.package == "onnxruntime-openvino" and d.install == (d.choice.requirement,), hm
                assert d.choice.low == (1, 23) and not d.side and not d.no_deps and not d.deps
                chosen += 1
            else:
                assert d.choice.declined and d.install == usual.install and d.side == usual.side, hm
    assert chosen


def test_without_the_request_an_installed_openvino_serves_the_cpu_provider_and_nothing_changes():
    d = decide(host(**CPU_TORCH, installed={"onnxruntime-openvino": "1.24.1"}))
    assert d.action == "ok" and d.keep == "onnxruntime-openvino" and d.choice.ep == "cpu" and not d.needs_pip


def test_an_unknown_request_is_named_and_ignored():
    d = decide(host(**CPU_TORCH), runtime="tensorrt")
    assert "ORT_TURBO_RUNTIME=tensorrt is not a runtime ORT Turbo installs" in d.choice.declined
    assert d.install == (CPU_RANGE,)


@pytest.mark.parametrize("tag,machine", [("linux-x86_64", "x86_64"), ("win-amd64", "x86_64"),
                                         ("macosx-11.0-arm64", "arm64"), ("win-arm64", "arm64"),
                                         ("linux-aarch64", "arm64"), ("macosx-10.9-universal2", "universal2")])
def test_interpreter_machine(tag, machine):
    assert interpreter_machine(tag) == machine


OV_ENV = {RUNTIME_ENV: "openvino"}
CPU_WEBUI = {**WEBUI_INSTALLED, "torch": "2.1.2+cpu", "onnxruntime": "1.26.0", "flatbuffers": "25.9.23"}


def _cpu_host(installed=CPU_WEBUI):
    return host(torch="2.1.2+cpu", pins=read_pins(DATA / "webui-v1.10.1-requirements_versions.txt"),
                installed=installed)


def test_openvino_request_downloads_first_then_swaps_offline_under_constraints_then_never_calls_pip(tmp_path):
    first = _cpu_host()
    pip = RecordingPip(first.installed)
    decision, out = _run(first, pip, tmp_path, environ=OV_ENV)
    assert "could not install" not in out and "ONNX Runtime installed for openvino" in out, out
    verbs = [c.split()[0] for c in pip.calls]
    assert verbs == ["download", "download", "uninstall", "install"], pip.calls
    assert pip.calls[0].startswith(f'download "{OV_RANGE}" -c ') and ' -d "' in pip.calls[0]
    assert pip.calls[1].startswith('download --no-deps "onnxruntime==1.26.0" -d "')
    assert pip.calls[2] == "uninstall -y onnxruntime"
    assert pip.calls[3].startswith(f'install "{OV_RANGE}" -c ') and "--no-index --find-links" in pip.calls[3]
    for i in (0, 3):  # the runtime's requirements resolve against the WebUI's versions
        assert pip.constraints[i]["numpy"] == "1.26.2" and pip.constraints[i]["protobuf"] == "3.20.0"
        assert "onnxruntime" not in pip.constraints[i] and "onnxruntime-openvino" not in pip.constraints[i]
    assert "onnxruntime" not in pip.installed and pip.installed["onnxruntime-openvino"] == "1.24.1"
    assert {n: pip.installed[n] for n in CPU_WEBUI if n != "onnxruntime"} == \
        {n: v for n, v in CPU_WEBUI.items() if n != "onnxruntime"}
    assert set(pip.installed) - set(CPU_WEBUI) == {"onnxruntime-openvino", "sympy", "mpmath"}

    for environ, ep in ((OV_ENV, "openvino"), ({}, "cpu")):  # next starts, with the request and without it
        again = RecordingPip(pip.installed)
        decision, out = _run(pip.host(first), again, tmp_path, environ=environ)
        assert decision.action == "ok" and again.calls == [], out
        assert out.strip() == f"[ORT Turbo] ONNX Runtime ready: onnxruntime-openvino 1.24.1 for {ep} " \
                              f"({out.split('(')[-1].split(' s,')[0]} s, nothing installed)", out


@pytest.mark.parametrize("failing,calls,words", [
    (0, 1, "downloading (nothing was removed)"),                        # no network
    (1, 2, "downloading (nothing was removed)"),                        # the old one is not on the index
    (2, 4, "uninstalling onnxruntime: pip uninstall failed"),           # a file in use (Windows)
    (3, 5, '"onnxruntime==1.26.0" is back in place'),                   # the offline install failed
], ids=["new runtime download", "old runtime download", "uninstall", "offline install"])
def test_a_failed_step_of_the_swap_leaves_the_old_runtime_installed(tmp_path, failing, calls, words):
    pip = RecordingPip(CPU_WEBUI)
    pip.fail = lambda args: len(pip.calls) == failing + 1  # calls: download, download, uninstall, install
    decision, out = _run(_cpu_host(), pip, tmp_path, environ=OV_ENV)
    assert len(pip.calls) == calls, pip.calls
    assert "could not install" in out and words in out and "The WebUI starts anyway" in out, out
    assert pip.installed.get("onnxruntime") == "1.26.0" and "onnxruntime-openvino" not in pip.installed
    assert f"remove {RUNTIME_ENV}" in out
    if failing >= 2:
        assert pip.calls[-1].startswith('install --no-deps "onnxruntime==1.26.0" --no-index --find-links "')


def test_when_the_restore_fails_too_the_user_is_told_there_may_be_no_onnxruntime(tmp_path):
    pip = RecordingPip(CPU_WEBUI, fail=lambda args: args.startswith("install"))
    _, out = _run(_cpu_host(), pip, tmp_path, environ=OV_ENV)
    assert "NO ONNX Runtime may be installed now" in out and 'pip install "onnxruntime==1.26.0"' in out, out


def test_a_declined_request_is_said_in_one_line_at_each_start(tmp_path):
    h = host(**V1101, installed={"onnxruntime-gpu": "1.26.0"}, side_cudnn9="9.8.0.87", nvidia_driver=True)
    pip = RecordingPip(h.installed)
    decision, out = _run(h, pip, tmp_path, environ=OV_ENV)
    assert decision.action == "ok" and pip.calls == [] and decision.keep == "onnxruntime-gpu"
    lines = out.splitlines()
    assert len(lines) == 2 and "ORT_TURBO_RUNTIME=openvino not followed" in lines[0], out
    assert "ONNX Runtime ready: onnxruntime-gpu 1.26.0 for cuda" in lines[1]


def _install_py(monkeypatch, launch):
    import importlib.util
    import sys
    import types

    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(**launch))
    spec = importlib.util.spec_from_file_location("ort_turbo_install_py", Path(__file__).parents[1] / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("skip_install", [False, True])
def test_install_py_uninstalls_without_run_pips_prefer_binary_which_pip_uninstall_refuses(monkeypatch, skip_install):
    import argparse

    ran = []
    module = _install_py(monkeypatch, dict(
        python="/w/venv/bin/python", args=argparse.Namespace(skip_install=skip_install),
        run_pip=lambda args, desc: ran.append(("run_pip", args)),
        run=lambda command, desc=None, errdesc=None: ran.append(("run", command))))
    module._webui_pip("uninstall -y onnxruntime", "removing onnxruntime")
    module._webui_pip('install "onnxruntime-openvino>=1.23,<1.27"', "ONNX Runtime")
    uninstall = [] if skip_install else [("run", '"/w/venv/bin/python" -m pip uninstall -y onnxruntime')]
    assert ran == uninstall + [("run_pip", 'install "onnxruntime-openvino>=1.23,<1.27"')]


def test_replace_opt_in_takes_the_same_download_first_route_with_the_no_deps_steps(tmp_path):
    installed = {**WEBUI_INSTALLED, "onnxruntime": "1.26.0"}
    pip = RecordingPip(installed)
    _, out = _run(host(**CU130, installed=installed, nvidia_driver=True), pip, tmp_path,
                  environ={"ORT_TURBO_REPLACE_ORT": "1"})
    assert [c.split(' -c ')[0].split(' -d ')[0].split(' --no-index')[0] for c in pip.calls] == [
        'download "flatbuffers"', 'download --no-deps "onnxruntime-gpu>=1.27"',
        'download --no-deps "onnxruntime==1.26.0"',
        "uninstall -y onnxruntime", 'install "flatbuffers"', 'install --no-deps "onnxruntime-gpu>=1.27"'], pip.calls
    assert all("--no-index" in c for c in pip.calls[4:]) and "could not install" not in out, out
    assert "onnxruntime" not in pip.installed and pip.installed["protobuf"] == "3.20.0"
