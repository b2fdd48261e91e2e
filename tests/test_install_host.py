"""install.py against a venv built from the WebUI v1.10.1 pins (see tests/webui_stub/host_env.py).

Without network it changes nothing and says what it could not install; with network it adds only
ONNX Runtime and its own dependencies, changing no installed package; the next launch makes no
pip call and takes well under a second. The second test takes the no-deps route (CUDA 13 under the
protobuf 3.20.0 pin) for real in a small venv; the third the ORT_TURBO_RUNTIME=openvino swap of
ORT Turbo's onnxruntime 1.26.0 for onnxruntime-openvino (numpy 1.26.2 and protobuf 3.20.0 kept).

All need the package registry (marker ``registry``): without it they fail, they do not skip.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from lib_ort.runtime_packages import version_tuple
from webui_stub.host_env import PINS, REPO, _pip_env, host_venv

pytestmark = pytest.mark.registry

DEPENDENCY_CLOSURE = """
import re, sys
from importlib import metadata
todo, seen = [sys.argv[1]], set()
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in seen:
        continue
    seen.add(name)
    for req in metadata.requires(name) or []:
        if "extra ==" not in req:
            todo.append(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req).group(0))
print(" ".join(sorted(seen)))
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    return host_venv(tmp_path_factory)


def test_install_py_leaves_the_webui_pins_alone_and_is_free_on_relaunch(host):
    before = host.freeze()
    assert before["protobuf"] == "3.20.0" and before["numpy"] == "1.26.2" and "onnxruntime" not in before

    # 1. no network: the WebUI must still start; the message names what could not be installed
    code, out, _ = host.run_install(INDEX_URL="http://127.0.0.1:9/simple")
    assert code == 0, out
    assert "could not install" in out and "onnxruntime>=1.17,<1.27" in out, out
    assert len(host.pip_calls()) == 1
    assert host.freeze() == before

    # 2. with network: only ONNX Runtime and its own new dependencies appear
    code, out, _ = host.run_install()
    assert code == 0, out
    assert "could not install" not in out, out
    assert len(host.pip_calls()) == 2
    after = host.freeze()
    changed = {name: (version, after.get(name)) for name, version in before.items() if after.get(name) != version}
    assert changed == {}, f"install.py changed installed packages: {changed}"
    added = set(after) - set(before)
    closure = set(host.run_python(DEPENDENCY_CLOSURE, "onnxruntime").split())
    assert "onnxruntime" in added and added <= closure, (added, closure)
    assert after["onnxruntime"].startswith("1.26."), after["onnxruntime"]  # the newest that leaves protobuf alone

    # 3. relaunch: no pip call, well under a second
    code, out, wall = host.run_install()
    assert code == 0, out
    assert len(host.pip_calls()) == 2, host.pip_calls()
    inner = float(re.search(r"ONNX Runtime ready: .* \(([\d.]+) s, nothing installed\)", out).group(1))
    print(f"relaunch: {inner:.3f} s deciding, {wall:.2f} s with interpreter start-up")
    assert inner < 0.5 and wall < 3.0, out
    assert host.freeze() == after

    # 4. the runtime works beside the pins (numpy 1.26.2, protobuf 3.20.0)
    out = host.run_python("import onnxruntime, numpy, google.protobuf as p; "
                          "print(onnxruntime.__version__, numpy.__version__, p.__version__, "
                          "onnxruntime.get_available_providers())")
    assert "1.26." in out and "1.26.2" in out and "3.20.0" in out and "CPUExecutionProvider" in out


#: install_runtime.run in the venv's own interpreter, pip run as install.py runs it; argv[4] (JSON) gives the
#: Host's torch (the venv has none: the Host says what a cu130 torch would) and the environment variables.
ROUTE = """
import dataclasses, io, json, runpy, sys
sys.path.insert(0, sys.argv[1])
from lib_ort import install_runtime
from lib_ort.install_layout import Layout
from lib_ort.runtime_packages import probe_host
webui_pip = runpy.run_path(sys.argv[1] + "/install.py", run_name="install")["_webui_pip"]  # no launch: plain pip
calls = []
def pip(args, desc):
    calls.append(args)
    webui_pip(args, desc)
given = json.loads(sys.argv[4])
host = dataclasses.replace(probe_host(pins_file=sys.argv[2]),
                           **{k: tuple(v) if isinstance(v, list) else v for k, v in given["host"].items()})
out = io.StringIO()
decision = install_runtime.run(pip, layout=Layout(sys.argv[3]), host=host, out=out, environ=given["environ"])
print(json.dumps({"action": decision.action, "calls": calls, "out": out.getvalue()}))
"""
CU130_HOST = {"torch": "2.9.0+cu130", "torch_cuda": [13, 0], "torch_cudnn": 9, "nvidia_driver": True}


def _small_venv(tmp_path, *packages):
    """A venv with ``packages`` (the WebUI's pins that matter), its pip and its ``pip list`` as a dict."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")

    def pip(*args):
        return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, env=_pip_env(), check=True)

    def freeze():
        listed = json.loads(pip("list", "--format=json").stdout)
        return {re.sub(r"[-_.]+", "-", d["name"]).lower(): d["version"] for d in listed}

    pip("install", "-q", *packages)
    return python, pip, freeze


def _route(python, tmp_path, given, env=None):
    done = subprocess.run([python, "-c", ROUTE, str(REPO), str(PINS), str(tmp_path / "data"), json.dumps(given)],
                          capture_output=True, text=True, env={**_pip_env(), **(env or {})}, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_no_deps_route_for_cuda13_keeps_protobuf_3_20_and_the_runtime_works(tmp_path):
    python, _, freeze = _small_venv(tmp_path, "protobuf==3.20.0", "numpy==1.26.2", "packaging")
    before = freeze()

    def route():
        return _route(python, tmp_path, {"host": CU130_HOST, "environ": {}})

    first = route()
    assert first["action"] == "install" and "could not install" not in first["out"], first["out"]
    assert [c.split(" -c ")[0] for c in first["calls"]] == ['install "flatbuffers"',
                                                           'install --no-deps "onnxruntime-gpu>=1.27"']
    after = freeze()
    assert {n: after.get(n) for n in before} == before  # protobuf 3.20.0, numpy 1.26.2: nothing changed
    assert set(after) - set(before) == {"onnxruntime-gpu", "flatbuffers"}
    assert tuple(int(p) for p in after["onnxruntime-gpu"].split(".")[:2]) >= (1, 27)

    # the next start: everything in place (read from the runtime's own metadata), no pip call
    second = route()
    assert second["action"] == "ok" and second["calls"] == [], second["out"]

    # the runtime runs a model on the CPU beside protobuf 3.20.0, and never imports protobuf
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = tmp_path / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), model)
    ran = subprocess.run([python, "-c", "import sys, json, numpy, onnxruntime as ort; "
                          "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']); "
                          "y = s.run(None, {'x': numpy.array([1.5, 2.0], numpy.float32)})[0]; "
                          "print(json.dumps([y.tolist(), 'google.protobuf' in sys.modules, "
                          "ort.get_available_providers()]))", str(model)],
                         capture_output=True, text=True, env=_pip_env(), check=True).stdout
    y, protobuf_loaded, providers = json.loads(ran)
    assert np.allclose(y, [3.0, 4.0]) and not protobuf_loaded
    assert "CPUExecutionProvider" in providers and "CUDAExecutionProvider" in providers


def test_openvino_request_swaps_the_cpu_runtime_offline_after_downloading_and_keeps_the_pins(tmp_path):
    """ORT_TURBO_RUNTIME=openvino on a CPU WebUI that has ORT Turbo's onnxruntime 1.26.0: without network
    nothing changes; with it onnxruntime-openvino replaces onnxruntime and numpy/protobuf stay."""
    python, pip, freeze = _small_venv(tmp_path, "protobuf==3.20.0", "numpy==1.26.2")
    pip("install", "-q", "onnxruntime==1.26.0", "protobuf==3.20.0", "numpy==1.26.2")  # as ORT Turbo installs it
    before = freeze()
    request = {"host": {"torch": "2.1.2+cpu"}, "environ": {"ORT_TURBO_RUNTIME": "openvino"}}

    offline = _route(python, tmp_path, request, env={"PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                                                     "PIP_CONFIG_FILE": os.devnull})
    assert "downloading (nothing was removed)" in offline["out"] and len(offline["calls"]) == 1, offline
    assert freeze() == before

    first = _route(python, tmp_path, request)
    assert first["action"] == "install" and "could not install" not in first["out"], first["out"]
    assert [c.split()[0] for c in first["calls"]] == ["download", "download", "uninstall", "install"]
    after = freeze()
    assert "onnxruntime" not in after and version_tuple(after["onnxruntime-openvino"])[:2] >= (1, 23)
    assert {n: after[n] for n in before if n != "onnxruntime"} == {n: v for n, v in before.items()
                                                                    if n != "onnxruntime"}  # numpy, protobuf kept
    ran = subprocess.run([python, "-c", "import onnxruntime; print(onnxruntime.get_available_providers())"],
                         capture_output=True, text=True, env=_pip_env(), check=True).stdout
    assert "OpenVINOExecutionProvider" in ran and "CPUExecutionProvider" in ran

    for environ, ep in (({"ORT_TURBO_RUNTIME": "openvino"}, "openvino"), ({}, "cpu")):  # later starts: no pip
        again = _route(python, tmp_path, {**request, "environ": environ})
        assert again["action"] == "ok" and again["calls"] == [] and f"for {ep} (" in again["out"], again
