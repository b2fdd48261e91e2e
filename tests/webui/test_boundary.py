"""What the WebUI loads: every file in scripts/ and every module of lib_ort.webui, and none of the
measurement package (lib_ort.bench), which only ``python -m lib_ort`` reaches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_LOAD_AS_THE_WEBUI_DOES = """
import importlib, importlib.util, json, pkgutil, sys
from pathlib import Path
repo = Path(sys.argv[1])
sys.path[:0] = [str(repo / "tests" / "webui_stub"), str(repo)]
import lib_ort.webui
for info in pkgutil.iter_modules(lib_ort.webui.__path__):
    importlib.import_module("lib_ort.webui." + info.name)
for script in sorted((repo / "scripts").glob("*.py")):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted(name for name in sys.modules if name == "lib_ort" or name.startswith("lib_ort."))))
"""


def test_the_webui_never_imports_the_measurement_package(tmp_path):
    env = {**os.environ, "ORT_TURBO_HOME": str(tmp_path / "artefacts"), "ORT_TURBO_DATA": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-c", _LOAD_AS_THE_WEBUI_DOES, str(REPO)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"lib_ort.webui.ui", "lib_ort.webui.api", "lib_ort.webui.job"} <= set(loaded)  # the glue did load
    assert [name for name in loaded if name == "lib_ort.bench" or name.startswith("lib_ort.bench.")] == []
