"""install.py against a venv built from the WebUI v1.10.1 pins (see tests/webui_stub/host_env.py).

Without network it changes nothing and says what it could not install; with network it adds only
ONNX Runtime and its own dependencies, changing no installed package; the next launch makes no
pip call and takes well under a second.
"""

import re

import pytest

from webui_stub.host_env import host_venv

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
