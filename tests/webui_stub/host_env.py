"""A WebUI-like host environment for the install tests: a venv built from the WebUI v1.10.1 pins.

Built once per test session (tests/test_install_host.py and tests/test_toolchain.py share it
through this module's cache) in a pytest temporary folder, with:

* every pin of ``tests/data/webui-host/webui-v1.10.1-requirements_versions.txt``, except
* ``setuptools==77.0.3`` instead of 69.5.1: the CPU torch wheels on these machines require
  setuptools >= 77.0.3; with 69.5.1 kept, pip backtracks and downloads an older CUDA torch (~1.9 GB);
* ``torch==2.13.0`` (the CPU wheel pip takes from local disk) where the file leaves torch unpinned;
* no torchvision: PyPI's torchvision does not import beside that torch. The five pins that
  require it (clean-fid, facexlib, open-clip-torch, spandrel, spandrel-extra-arches) are installed
  with ``--no-deps``, so their own dependencies (torchvision, timm, opencv, numba …) are absent.
  Every other pin installs on Python 3.11.

A fake WebUI root holds the pins file and ``launch.py`` (the stand-in beside this file), and
install.py runs as the WebUI runs it: ``"<venv python>" install.py`` with ``PYTHONPATH=<webui root>``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PINS = REPO / "tests" / "data" / "webui-host" / "webui-v1.10.1-requirements_versions.txt"
NEEDS_TORCHVISION = {"clean-fid", "facexlib", "open-clip-torch", "spandrel", "spandrel-extra-arches"}
STUB_LAUNCH = Path(__file__).with_name("launch.py")


def test_pins() -> tuple[list[str], list[str]]:
    """(pins installed with dependencies, pins installed with --no-deps)."""
    with_deps, no_deps = [], []
    for line in PINS.read_text().splitlines():  # the file has CRLF line ends and comments
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[=<>!~ ]", line, 1)[0].lower()
        if name == "setuptools":
            line = "setuptools==77.0.3"  # the local torch wheels require setuptools >= 77.0.3
        elif line == "torch":
            line = "torch==2.13.0"
        (no_deps if name in NEEDS_TORCHVISION else with_deps).append(line)
    return with_deps, no_deps


def _pip_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_TARGET", "PIP_PREFIX")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


class HostVenv:
    def __init__(self, root: Path):
        self.root = root
        self.venv = root / "venv"
        self.python = str(self.venv / "bin" / "python")
        self.webui = root / "webui"
        self.data = root / "ort-turbo-data"
        self.pip_log = root / "pip-calls.txt"

    def build(self) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
        with_deps, no_deps = test_pins()
        reqs = self.root / "pins.txt"
        reqs.write_text("\n".join(with_deps) + "\n")
        # --no-compile: byte-compiling torch, gradio & co. up front would double the build time
        self.pip("install", "-q", "--no-compile", "-r", str(reqs))
        self.pip("install", "-q", "--no-compile", "--no-deps", *no_deps)
        self.webui.mkdir()
        shutil.copy(PINS, self.webui / "requirements_versions.txt")
        shutil.copy(STUB_LAUNCH, self.webui / "launch.py")
        return time.perf_counter() - start

    def pip(self, *args: str) -> str:
        result = subprocess.run([self.python, "-m", "pip", *args], capture_output=True, text=True, env=_pip_env())
        if result.returncode != 0:
            raise RuntimeError(f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def freeze(self) -> dict[str, str]:
        out = self.pip("list", "--format=json")
        return {re.sub(r"[-_.]+", "-", d["name"]).lower(): d["version"] for d in json.loads(out)}

    def pip_calls(self) -> list[str]:
        return self.pip_log.read_text().splitlines() if self.pip_log.exists() else []

    def run_install(self, **extra_env: str) -> tuple[int, str, float]:
        """Run install.py as the WebUI does; returns (exit code, output, wall seconds)."""
        env = _pip_env()
        env.update({"PYTHONPATH": str(self.webui), "WEBUI_STUB_PIP_LOG": str(self.pip_log),
                    "ORT_TURBO_DATA": str(self.data)})
        env.update(extra_env)
        start = time.perf_counter()
        result = subprocess.run([self.python, str(REPO / "install.py")], cwd=self.webui, env=env,
                                capture_output=True, text=True, timeout=900)
        return result.returncode, result.stdout + result.stderr, time.perf_counter() - start

    def run_python(self, code: str, *args: str) -> str:
        result = subprocess.run([self.python, "-c", code, *args], capture_output=True, text=True, env=_pip_env(),
                                timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"host python failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def ensure_runtime(self) -> None:
        """Make sure install.py has run (for tests that only need its result)."""
        if "onnxruntime" not in self.freeze():
            code, out, _ = self.run_install()
            assert code == 0, out


_cache: dict[str, HostVenv] = {}


def host_venv(tmp_path_factory) -> HostVenv:
    """The session's host venv, built on first use (from the package registry: without it, an error)."""
    if "host" not in _cache:
        host = HostVenv(tmp_path_factory.mktemp("webui-host"))
        seconds = host.build()
        print(f"\n[host venv built in {seconds:.0f} s]", flush=True)
        _cache["host"] = host
    return _cache["host"]
