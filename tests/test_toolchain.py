"""The Olive toolchain: its own venv, reusing the WebUI's torch, never writing into the WebUI.

The first test builds a real toolchain (olive-ai, onnx, onnxscript, onnxruntime from PyPI) for the
WebUI-pins host venv of tests/webui_stub/host_env.py, optimizes a tiny UNet with it in the child
process, runs the artefact on the ONNX Runtime that install.py put into the host, and checks that
the host's packages did not change. The others check detection and rebuilding of half-made or
stale toolchains with an empty requirement list (a bare venv, a few seconds).

The first test needs the package registry (marker ``registry``): without it, it fails, it does not skip.
"""

import json
import subprocess
import sys
import time

import pytest

from conftest import checkpoint_of
from lib_ort.install_layout import COMPLETE_MARKER, Layout, delete_artefacts, delete_toolchain, read_marker, usage
from lib_ort.optimize import optimize_export
from lib_ort.registry import Registry
from lib_ort.toolchain import HOST_PTH, ensure_toolchain, venv_python
from webui_stub.host_env import host_venv

RUN_ARTEFACT = """
import json, sys
import numpy as np, onnxruntime as ort
folder = sys.argv[1]
m = json.load(open(folder + "/manifest.json"))
s = ort.InferenceSession(folder + "/" + m["model_file"], providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
feeds = {"sample": rng.standard_normal((1, m["io"]["in_channels"], 8, 8), dtype=np.float32),
         "timestep": np.array([500.0], dtype=np.float32),
         "encoder_hidden_states": rng.standard_normal((1, 77, m["io"]["context_dim"]), dtype=np.float32)}
out = s.run(None, feeds)[0]
print(json.dumps({"ort": ort.__version__, "numpy": np.__version__, "shape": list(out.shape),
                  "finite": bool(np.isfinite(out).all())}))
"""


@pytest.mark.registry  # the toolchain and the host venv come from the package registry
def test_toolchain_optimizes_a_tiny_unet_and_leaves_the_webui_alone(tmp_path_factory, tmp_path, export_of):
    host = host_venv(tmp_path_factory)
    host.ensure_runtime()
    before = host.freeze()
    messages = []
    start = time.perf_counter()
    toolchain = ensure_toolchain(Layout(tmp_path / "data"), host_python=host.python,
                                 progress=lambda f, m: messages.append((f, m)))
    built_s = time.perf_counter() - start
    print(f"\ntoolchain built in {built_s:.0f} s")
    assert messages[0][1].startswith("Olive toolchain: building it, because there is no toolchain yet")
    assert messages[-1][0] == 1.0 and all(0.0 <= f <= 1.0 for f, _ in messages)
    marker = read_marker(tmp_path / "data" / "toolchain")
    assert marker["host_numpy"] == "1.26.2"
    # the toolchain has its own protobuf/pydantic/onnx, and reuses the WebUI's torch and numpy 1.x
    probe = subprocess.run([toolchain.python, "-c", "import json, google.protobuf as p, pydantic, numpy, torch, olive; "
                            "print(json.dumps([p.__version__, pydantic.VERSION, numpy.__version__, torch.__file__]))"],
                           capture_output=True, text=True, env=toolchain.environment(), check=True)
    protobuf, pydantic, numpy, torch_file = json.loads(probe.stdout)
    assert protobuf.split(".")[0] != "3" and pydantic.startswith("2.") and numpy == "1.26.2"
    assert torch_file.startswith(str(host.venv))

    # reused: no rebuild, no pip
    again = time.perf_counter()
    assert ensure_toolchain(Layout(tmp_path / "data"), host_python=host.python) == toolchain
    assert time.perf_counter() - again < 10
    assert read_marker(tmp_path / "data" / "toolchain")["created"] == marker["created"]

    registry = Registry(tmp_path / "registry")
    artefact = optimize_export(export_of("tiny-sd1"), "cpu", registry, checkpoint=checkpoint_of("tiny-sd1"),
                               toolchain=toolchain)
    assert artefact.manifest["versions"]["olive-ai"] == "0.13.0"
    assert host.freeze() == before, "building or running the toolchain changed the WebUI's packages"

    # the artefact runs on the WebUI's runtime (ORT 1.26 beside numpy 1.26.2 and protobuf 3.20.0)
    ran = json.loads(host.run_python(RUN_ARTEFACT, str(artefact.folder)))
    assert ran["ort"].startswith("1.26.") and ran["numpy"] == "1.26.2"
    assert ran["shape"] == [1, 4, 8, 8] and ran["finite"]

    # clean-up helpers
    assert usage(Layout(tmp_path / "data"), registry.root)["toolchain"] > 50e6
    assert delete_artefacts(registry.root) > 0 and not registry.root.exists()
    assert delete_toolchain(Layout(tmp_path / "data")) > 50e6
    assert not (tmp_path / "data" / "toolchain").exists()


def _bare(folder, **kw):
    return ensure_toolchain(folder=folder, host_python=sys.executable, requirements=(), modules=("json",), **kw)


def test_bare_toolchain_sees_its_own_site_packages_before_the_webuis(tmp_path):
    toolchain = _bare(tmp_path / "tc")
    paths = json.loads(subprocess.run([toolchain.python, "-c", "import sys, json; print(json.dumps(sys.path))"],
                                      capture_output=True, text=True, check=True).stdout)
    own = next(i for i, p in enumerate(paths) if p.startswith(str(tmp_path / "tc")) and p.endswith("site-packages"))
    host_site = json.loads(subprocess.run([sys.executable, "-c", "import sysconfig, json; "
                                           "print(json.dumps(sysconfig.get_paths()['purelib']))"],
                                          capture_output=True, text=True, check=True).stdout)
    assert paths.index(host_site) > own
    assert list((tmp_path / "tc").rglob(HOST_PTH))


@pytest.mark.parametrize("damage", ["marker", "python", "stale"])
def test_half_made_broken_or_stale_toolchains_are_rebuilt(tmp_path, damage):
    folder = tmp_path / "tc"
    _bare(folder)
    first = read_marker(folder)
    if damage == "marker":      # killed while building: the marker is written last
        (folder / COMPLETE_MARKER).unlink()
    elif damage == "python":    # interpreter gone (base Python moved or upgraded)
        venv_python(folder).unlink()
    else:                       # made for another WebUI torch/numpy or requirement set
        stale = dict(first, host_torch="0.0.1")
        (folder / COMPLETE_MARKER).write_text(json.dumps(stale))
    messages = []
    time.sleep(1.1)  # markers record creation time to the second
    _bare(folder, progress=lambda f, m: messages.append(m))
    assert messages and "building it, because" in messages[0]
    assert read_marker(folder)["created"] != first["created"]
    assert venv_python(folder).exists()
