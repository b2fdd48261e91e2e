"""The Olive toolchain: its own Python environment, made on the first export and reused after.

Olive and ONNX need packages that clash with the WebUI's pins (protobuf >= 4 against 3.20.0,
pydantic 2 against fastapi 0.94's pydantic 1), so they live in a virtual environment inside the
extension's data folder, used only by the optimization child process
(``lib_ort.optimize.Toolchain``).

Reusing the WebUI's torch (Olive imports it; a second copy is several GB): a ``.pth`` file in the
toolchain's site-packages appends the WebUI's site-packages to ``sys.path`` *after* the
toolchain's own. Python then imports the toolchain's copy of anything installed in both, and pip,
run with the toolchain's interpreter, installs only into the toolchain: it sees the WebUI's
packages as installed, and when one is too old for Olive it installs a newer copy into the
toolchain and leaves the WebUI's in place ("Not uninstalling …, outside environment"). A venv made
with ``--system-site-packages`` would not do: it exposes the *base* interpreter's packages, not
the WebUI venv's.

numpy: when the WebUI has numpy 1.x (its torch may be built against numpy 1), the toolchain is
held to numpy < 2 so that the torch it reuses keeps working.

A toolchain is usable only if its completion marker, written last, matches what would be built
now (requirements, interpreter, the WebUI's site-packages, torch and numpy versions) and its
interpreter starts and finds the packages. Anything else is half-made or stale and is rebuilt.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .errors import ToolchainError
from .install_layout import Layout, read_marker, remove_tree, toolchain_lock, write_marker
from .optimize import Toolchain

#: What the optimization child needs; the same pins as requirements-dev.txt (the tested set).
REQUIREMENTS = (
    "olive-ai==0.13.0",
    "onnx==1.23.2",
    "onnxscript==0.7.2",
    "onnxruntime==1.32.0",
    # ORT 1.32's UNet attention fusion crashes with numpy >= 2.4 (int() of a 1-element array)
    "numpy<2.4",
)
#: Modules the child imports; checked with find_spec (cheap) before each use.
MODULES = ("olive", "onnx", "onnxscript", "onnxruntime", "numpy", "torch")
HOST_PTH = "zz-ort-turbo-webui-site-packages.pth"
MARKER_FORMAT = 1
_PIP_ENV_DROP = ("PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_USER", "PIP_REQUIRE_VIRTUALENV", "PYTHONPATH",
                 "PYTHONHOME", "PYTHONUSERBASE", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")


def venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _PIP_ENV_DROP}
    env.update({"PYTHONNOUSERSITE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
    env.update(extra or {})
    return env


def describe_host(python: str) -> dict:
    """The WebUI interpreter's version, site-packages folders and torch/numpy versions."""
    code = ("import json,sys,sysconfig\nfrom importlib import metadata\n"
            "def v(n):\n try: return metadata.version(n)\n except Exception: return None\n"
            "p=sysconfig.get_paths()\n"
            "print(json.dumps({'python':'%d.%d.%d'%sys.version_info[:3],'prefix':sys.prefix,"
            "'site':list(dict.fromkeys([p['purelib'],p['platlib']])),'torch':v('torch'),'numpy':v('numpy')}))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, env=_clean_env(),
                             check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        raise ToolchainError(f"could not ask the WebUI's Python ({python}) about its environment: {e}") from e


def wanted_marker(host: dict, requirements: tuple[str, ...]) -> dict:
    """What a usable toolchain's marker says (everything but the creation details)."""
    return {"format": MARKER_FORMAT, "requirements": list(requirements), "python": host["python"],
            "host_site": host["site"], "host_torch": host["torch"], "host_numpy": host["numpy"]}


def constraints_for(host: dict) -> list[str]:
    numpy = host.get("numpy")
    return ["numpy<2"] if numpy and re.match(r"1\.", numpy) else []


def problem(folder: Path, wanted: dict, modules: tuple[str, ...] = MODULES) -> str | None:
    """Why the toolchain in ``folder`` cannot be used as it is, or None when it can."""
    if not folder.exists():
        return "there is no toolchain yet"
    marker = read_marker(folder)
    if marker is None:
        return "the toolchain is half-made (its completion marker is missing)"
    for key, value in wanted.items():
        if marker.get(key) != value:
            return f"the toolchain was made for {key} = {marker.get(key)!r}, now {value!r}"
    python = venv_python(folder)
    if not python.exists():
        return f"the toolchain's interpreter {python} is missing"
    try:
        missing = problem_modules(python, modules)
    except (OSError, subprocess.SubprocessError) as e:
        return f"the toolchain's interpreter does not start ({e})"
    return f"the toolchain cannot import {missing}" if missing else None


def _run_pip(python: Path, args: list[str], progress, start: float, span: tuple[float, float]) -> None:
    """Run pip with the toolchain's interpreter, turning its output into progress messages."""
    cmd = [str(python), "-m", "pip", *args]
    lines: list[str] = []
    lo, hi = span
    seen = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_clean_env(),
                          bufsize=1) as child:
        for line in child.stdout:
            line = line.rstrip()
            lines.append(line)
            what = re.match(r"\s*(Collecting|Downloading|Installing collected packages|Successfully installed):?\s*([^\s:]*)", line)
            if what:
                seen += 1
                fraction = lo + (hi - lo) * (0.9 if what.group(1).startswith(("Installing", "Successfully"))
                                             else min(0.85, seen / 120))
                progress(fraction, f"Olive toolchain: {what.group(1).lower()} {what.group(2)} "
                                   f"({time.perf_counter() - start:.0f} s)".rstrip())
    if child.returncode != 0:
        tail = "\n".join(lines[-15:])
        raise ToolchainError(f"installing the Olive toolchain failed (pip exit code {child.returncode}); is the "
                             f"network reachable? Nothing was installed into the WebUI. Last lines of pip:\n{tail}")


def build(folder: Path, host_python: str, host: dict, *, requirements: tuple[str, ...] = REQUIREMENTS,
          modules: tuple[str, ...] = MODULES, progress=None, pip_args: tuple[str, ...] = ()) -> None:
    """Make the toolchain in ``folder`` from nothing (removing whatever is there first)."""
    report = progress or (lambda fraction, message: None)
    start = time.perf_counter()
    remove_tree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    report(0.01, "Olive toolchain: creating its Python environment")
    bare = [] if requirements else ["--without-pip"]
    made = subprocess.run([host_python, "-m", "venv", *bare, str(folder)], capture_output=True, text=True,
                          env=_clean_env())
    python = venv_python(folder)
    if made.returncode != 0 or not python.exists():
        raise ToolchainError(f"could not create a virtual environment with {host_python} -m venv "
                             f"(on Debian/Ubuntu: install python3-venv): {made.stderr.strip()[-500:]}")
    site = subprocess.run([str(python), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, env=_clean_env(), check=True).stdout.strip()
    # appended after the toolchain's own site-packages: the toolchain's copies win, pip writes only here
    Path(site, HOST_PTH).write_text("".join(p + "\n" for p in host["site"]))
    if requirements:
        constraints = folder / "ort-turbo-constraints.txt"
        constraints.write_text("".join(c + "\n" for c in constraints_for(host)))
        report(0.05, f"Olive toolchain: installing {', '.join(requirements[:4])} (about 200 MB; first export only)")
        # --no-compile: Python compiles what the child imports on first use; compiling every file of
        # every package up front costs more than half a minute
        _run_pip(python, ["install", "--prefer-binary", "--no-compile", "-c", str(constraints), *pip_args,
                          *requirements],
                 report, start, (0.05, 0.95))
    missing = problem_modules(python, modules)
    if missing:
        raise ToolchainError(f"the Olive toolchain was installed but cannot import {missing}")
    versions = subprocess.run([str(python), "-c", "import json\nfrom importlib import metadata as m\n"
                               "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"],
                              capture_output=True, text=True, env=_clean_env()).stdout
    write_marker(folder, {**wanted_marker(host, requirements), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                          "build_s": round(time.perf_counter() - start, 1),
                          "installed": json.loads(versions or "{}")})
    report(1.0, f"Olive toolchain ready ({time.perf_counter() - start:.0f} s)")


def problem_modules(python: Path, modules: tuple[str, ...]) -> str:
    """The modules the interpreter cannot find (or its error), empty when all are there."""
    check = "import importlib.util as u,sys\nprint(' '.join(n for n in sys.argv[1:] if u.find_spec(n) is None))"
    result = subprocess.run([str(python), "-c", check, *modules], capture_output=True, text=True, env=_clean_env(),
                            timeout=120)
    return result.stdout.strip() if result.returncode == 0 else result.stderr.strip()[-300:]


def ensure_toolchain(layout: Layout | None = None, *, host_python: str = sys.executable, progress=None,
                     requirements: tuple[str, ...] = REQUIREMENTS, modules: tuple[str, ...] = MODULES,
                     pip_args: tuple[str, ...] = (), folder: str | os.PathLike | None = None) -> Toolchain:
    """The Olive toolchain for the optimization child: reused when usable, else (re)built.

    ``host_python`` is the WebUI's interpreter, whose site-packages (torch) the toolchain reuses.
    ``progress`` is ``callable(fraction, message)``. Raises :class:`ToolchainError` with what to do.
    """
    report = progress or (lambda fraction, message: None)
    folder = Path(folder) if folder else (layout or Layout.default()).toolchain
    host = describe_host(host_python)
    wanted = wanted_marker(host, tuple(requirements))
    with toolchain_lock(folder):
        why = problem(folder, wanted, tuple(modules))
        if why is not None:
            report(0.0, f"Olive toolchain: building it, because {why}")
            build(folder, host_python, host, requirements=tuple(requirements), modules=tuple(modules),
                  progress=report, pip_args=tuple(pip_args))
    return Toolchain(python=str(venv_python(folder)), env={"PYTHONNOUSERSITE": "1"})
