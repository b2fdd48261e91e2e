"""Run by the WebUI (with its own interpreter) before every launch and once when installed.

Installs the ONNX Runtime package this WebUI can run — chosen from its torch build, OS, pins and
whether an NVIDIA driver is visible, see lib_ort/runtime_packages.py; the CPU one at least; with
ORT_TURBO_RUNTIME=openvino set where the WebUI is launched, onnxruntime-openvino on a CPU machine — and
nothing else into the WebUI's environment, changing no package it has; the Olive
toolchain is made later, in the extension's data folder, on the first export. With everything in
place this only reads package metadata (no pip, no import of torch or of the WebUI's modules).
"""

import os
import sys
from pathlib import Path

EXTENSION = Path(__file__).resolve().parent
sys.path.insert(0, str(EXTENSION))

from lib_ort import install_runtime  # noqa: E402


def _webui_pip(args: str, desc: str) -> None:
    """pip through the WebUI's launcher: its venv interpreter, --prefer-binary, its INDEX_URL.

    ``uninstall`` refuses those options, so it runs through ``launch.run`` without them."""
    uninstall = args.startswith("uninstall ")
    try:
        import launch
    except ImportError:  # run by hand, outside the WebUI
        import subprocess

        extra = "" if uninstall else " --prefer-binary"
        result = subprocess.run(f'"{sys.executable}" -m pip {args}{extra}', shell=True)
        if result.returncode != 0:
            raise RuntimeError(f"pip {args} failed with exit code {result.returncode}")
        return
    if not uninstall:
        launch.run_pip(args, desc=f"ORT Turbo: {desc}")
    elif not getattr(launch.args, "skip_install", False):  # like run_pip, a no-op with --skip-install
        launch.run(f'"{launch.python}" -m pip {args}', desc=f"ORT Turbo: {desc}", errdesc=f"ORT Turbo: {desc} failed")


def _pins_file():
    """The WebUI's requirements_versions.txt (or $REQS_FILE), beside launch.py on PYTHONPATH."""
    name = os.environ.get("REQS_FILE", "requirements_versions.txt")
    roots = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + [os.getcwd()]
    for root in roots:
        candidate = Path(root, name)
        if candidate.is_file():
            return candidate
    return None


if __name__ == "__main__":
    install_runtime.run(_webui_pip, python=sys.executable, pins_file=_pins_file())
