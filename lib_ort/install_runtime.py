"""What install.py does, without the WebUI: decide, then install only what is missing.

The WebUI runs install.py before every launch. On a relaunch with everything in place this reads
package metadata, decides "ok" and returns, in milliseconds and without calling pip. Otherwise it
installs the chosen ONNX Runtime with every installed distribution given to pip as a constraint at
its installed version, so pip can add packages (the runtime and its own small dependencies) but
cannot upgrade, downgrade or remove one that is there — the WebUI's pins included.

On the no-deps route (CUDA 13 under the WebUI's protobuf pin) that is two calls: the runtime's
absent requirements under the same constraints, then the runtime itself with ``--no-deps``.

Replacing an installed variant (the user's ``ORT_TURBO_RUNTIME=openvino`` or ``ORT_TURBO_REPLACE_ORT=1``)
never leaves the WebUI without an ``onnxruntime``: everything is downloaded first (the new runtime with
its requirements under the same constraints, and a wheel of each variant to be removed); only then is the
old one uninstalled and the new one installed from those files, without the network. Should that install
fail all the same, the old variant goes back from its downloaded wheel.

pip is called through the ``pip(args, desc)`` callable it is given (the WebUI's ``launch.run_pip``,
which runs the WebUI's own interpreter and raises ``RuntimeError`` on failure), never through a
bare ``python``. A failed install (no network, say) is reported and the WebUI starts anyway.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .install_layout import Layout, read_marker, remove_tree, write_marker
from .runtime_packages import (CUDNN9_FOLDER, REPLACE_ENV, REQUESTABLE, RUNTIME_ENV, Decision, Host, decide,
                               freeze_constraints, normalize, probe_host, quoted)

PREFIX = "[ORT Turbo]"
#: Keep a launch without network short: pip's default retries take minutes to give up.
NETWORK_ARGS = "--retries 1 --timeout 30"


def side_version(layout: Layout, name: str = CUDNN9_FOLDER) -> str | None:
    marker = read_marker(layout.side_folder(name))
    return marker.get("version") if marker else None


def _say(out, text: str) -> None:
    print(f"{PREFIX} {text}", file=out, flush=True)


def _installed_version(target: Path, dist: str) -> str | None:
    prefix = normalize(dist).replace("-", "_") + "-"
    for entry in target.glob("*.dist-info"):
        if normalize(entry.name).replace("-", "_").startswith(prefix):
            return entry.name[len(prefix):-len(".dist-info")]
    return None


def install_side(layout: Layout, requirement: str, pip, out) -> str:
    """Install ``requirement`` (cuDNN 9) with --no-deps into our own folder, marker last."""
    final = layout.side_folder(CUDNN9_FOLDER)
    layout.runtime_libs.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=layout.runtime_libs))
    try:
        _say(out, f"installing {requirement} into {final} (about 700 MB, once; torch's own cuDNN is not touched)")
        pip(f'install --no-deps --target "{staging}" "{requirement}" {NETWORK_ARGS}', f"cuDNN 9 for ONNX Runtime")
        version = _installed_version(staging, requirement.split(">")[0].split("=")[0].split("<")[0])
        remove_tree(final)
        os.replace(staging, final)
        write_marker(final, {"requirement": requirement, "version": version})
        return version or "?"
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def report_decision(decision: Decision, out) -> None:
    for reason in decision.reasons:
        _say(out, reason)
    for line in decision.advice:
        _say(out, line)


def run(pip, *, python: str = sys.executable, pins_file: str | os.PathLike | None = None,
        layout: Layout | None = None, out=None, environ=None, host: Host | None = None) -> Decision:
    """Decide and act; never raises for an install failure (the WebUI must start).

    ``host`` replaces the probe of this interpreter (tests)."""
    out = out or sys.stdout
    environ = os.environ if environ is None else environ
    layout = layout or Layout.default()
    start = time.perf_counter()
    host = host or probe_host(pins_file=pins_file, side_cudnn9=side_version(layout))
    decision = decide(host, replace=environ.get(REPLACE_ENV) == "1", python=python,
                      runtime=environ.get(RUNTIME_ENV, "").strip().lower() or None)
    choice = decision.choice
    if decision.action == "ok":
        if choice.declined:  # the user asked for a runtime: say at each start why it is not there
            _say(out, choice.declined)
        _say(out, f"ONNX Runtime ready: {decision.keep} {host.installed.get(decision.keep)} for {choice.ep} "
                  f"({time.perf_counter() - start:.3f} s, nothing installed)")
        return decision
    report_decision(decision, out)
    if decision.action == "conflict":
        _say(out, "nothing was installed or removed; the WebUI starts as it is, and artefacts run on "
                  "whatever ONNX Runtime provider is available")
        return decision
    failures = []
    if decision.deps or decision.install or decision.uninstall:
        failures += _install_runtime(decision, host, pip, out)
    for requirement in decision.side:
        try:
            install_side(layout, requirement, pip, out)
        except (RuntimeError, OSError) as e:
            failures.append(f"{requirement} (into {layout.side_folder(CUDNN9_FOLDER)}): {e}")
    if failures:
        _say(out, "could not install:")
        for failure in failures:
            _say(out, "  " + failure.strip().replace("\n", "\n    ")[-1500:])
        _say(out, "The WebUI starts anyway: nothing it pins was changed, existing artefacts keep running on the "
                  "ONNX Runtime already there (if any), and ORT Turbo tries again at the next start "
                  "(no network? a proxy? see the pip message above).")
        if choice.ep in REQUESTABLE:
            _say(out, f"To stop asking for {choice.package}: remove {RUNTIME_ENV} from webui-user.sh/.bat.")
    else:
        _say(out, f"ONNX Runtime installed for {choice.ep} ({time.perf_counter() - start:.0f} s)")
    return decision


def _install_runtime(decision: Decision, host: Host, pip, out) -> list[str]:
    """The runtime's absent requirements, then the runtime (with --no-deps on the no-deps route), each
    under constraints that hold every installed package and every pin; when a variant is replaced, from
    files downloaded before it is removed (see the module docstring). The failures, as text."""
    released = (decision.choice.package, *decision.uninstall)
    constraints = tempfile.NamedTemporaryFile("w", suffix="-ort-turbo-constraints.txt", delete=False)
    wheels = Path(tempfile.mkdtemp(prefix="ort-turbo-wheels-")) if decision.uninstall else None
    try:
        with constraints:
            constraints.write("".join(line + "\n" for line in
                                      freeze_constraints(host.installed, pins=host.pins, release=released)))
        held = f'-c "{constraints.name}"'
        steps = []
        if decision.deps:
            steps.append((quoted(decision.deps), "", "ONNX Runtime's requirements"))
        flags = "--no-deps " if decision.no_deps else ""
        steps += [(quoted([r]), flags, f"ONNX Runtime ({r})") for r in decision.install]
        if wheels is None:
            for requirements, flags, desc in steps:
                try:
                    pip(f"install {flags}{requirements} {held} {NETWORK_ARGS}", desc)
                except RuntimeError as e:
                    return [f"{requirements}: {e}"]  # the runtime without its requirements would not import
            return []
        return _replace(decision, host, pip, out, steps, held, wheels)
    finally:
        os.unlink(constraints.name)
        if wheels is not None:
            shutil.rmtree(wheels, ignore_errors=True)


def _replace(decision: Decision, host: Host, pip, out, steps, held: str, wheels: Path) -> list[str]:
    """Download, uninstall, install offline; if the uninstall or an install fails, put the old variants back
    (a no-op for one still installed)."""
    old = quoted(f"{name}=={host.installed[name]}" for name in decision.uninstall)
    local = f'--no-index --find-links "{wheels}"'
    try:
        for requirements, flags, desc in steps:
            pip(f'download {flags}{requirements} {held} -d "{wheels}" {NETWORK_ARGS}', f"downloading {desc}")
        pip(f'download --no-deps {old} -d "{wheels}" {NETWORK_ARGS}', f"keeping {old} at hand, to restore")
    except RuntimeError as e:
        return [f"downloading (nothing was removed): {e}"]

    def restore(failure: str) -> list[str]:
        try:
            pip(f"install --no-deps {old} {local}", f"restoring {old}")
            return [f"{failure}; {old} is back in place"]
        except RuntimeError as again:
            _say(out, f"NO ONNX Runtime may be installed now: restoring {old} failed too; run pip install {old}")
            return [f"{failure}; restoring {old}: {again}"]

    try:
        pip(f"uninstall -y {' '.join(decision.uninstall)}", f"removing {', '.join(decision.uninstall)}")
    except RuntimeError as e:
        return restore(f"uninstalling {', '.join(decision.uninstall)}: {e}")
    for requirements, flags, desc in steps:
        try:
            pip(f"install {flags}{requirements} {held} {local}", desc)
        except RuntimeError as e:
            return restore(f"{requirements}: {e}")
    return []
