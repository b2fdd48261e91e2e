"""Which ONNX Runtime package the WebUI process needs, decided from what is installed.

The decision is a pure function of :class:`Host` (torch's build, the OS, the installed ONNX Runtime
variants and the WebUI's pins), so the whole table is unit-tested without a WebUI, a GPU or a
network. :func:`probe_host` fills a ``Host`` from the running interpreter using only
``importlib.metadata`` and a few file reads: it never imports torch or onnxruntime, so a relaunch
with everything in place costs milliseconds.

The facts the table rests on (measured from the wheels on PyPI, see ``tests/data/webui-host/README.md``):

* every ONNX Runtime from 1.27 on requires protobuf >= 4.25.8; the WebUI pins protobuf 3.20.0;
* onnxruntime-gpu 1.19 … 1.26 links CUDA 12 + cuDNN 9, 1.27 on links CUDA 13, 1.17/1.18 CUDA 11 +
  cuDNN 8; no PyPI build links CUDA 12 + cuDNN 8 (the WebUI v1.10.1 default torch 2.1.2+cu121);
* onnxruntime 1.24 on needs Python >= 3.11 (the WebUI on Windows runs 3.10): version *ranges* are
  used, so pip picks the newest release that has a wheel for this Python;
* ONNX Runtime does not import protobuf at run time, so for CUDA 13 under the protobuf 3.20.0 pin
  onnxruntime-gpu >= 1.27 is installed with ``--no-deps`` and its other requirements (absent ones
  only) beside it: every pin stays as it is (the "no-deps route").

"Nothing fits" is never an outcome: every host gets at least the CPU runtime. A CUDA torch on a
machine that shows no NVIDIA driver gets the CPU runtime too (the driver check reads a few paths:
no GPU is probed, nothing is imported).

All ONNX Runtime variants install the same ``onnxruntime`` module folder: installing a second one
overwrites the first, and uninstalling either later breaks the other. So an installed variant is
kept whenever it can serve the chosen provider, and nothing is ever uninstalled without the user
asking for it (``ORT_TURBO_REPLACE_ORT=1``).

OpenVINO is the user's choice, never the table's: with ``ORT_TURBO_RUNTIME=openvino`` (set where the
WebUI is launched, e.g. webui-user.sh/.bat) a machine that runs ORT Turbo on the CPU gets
onnxruntime-openvino, which replaces the plain CPU ``onnxruntime`` (the request is the asking). A GPU
machine (a CUDA torch with a driver, torch-directml), an installed GPU variant, or a platform without
an onnxruntime-openvino wheel keeps today's decision, and one line says why. Without the request an
installed onnxruntime-openvino stays: it serves the CPU provider like any variant.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path

from .providers import ONNXRUNTIME_DISTRIBUTIONS, PROVIDERS, provider, served_by

#: First release whose metadata requires protobuf >= 4.25.8 and whose GPU wheels link CUDA 13.
ORT_PROTOBUF_4_AND_CUDA_13 = (1, 27)
#: protobuf that ORT >= 1.27 requires.
PROTOBUF_FOR_NEW_ORT = (4, 25, 8)
#: First onnxruntime-gpu on PyPI built for CUDA 12 + cuDNN 9.
ORT_GPU_CUDA12 = (1, 19)
#: Side-installed cuDNN 9 for ORT when torch carries cuDNN 8 (different soname, same pip name).
CUDNN9_REQUIREMENT = "nvidia-cudnn-cu12>=9.1,<10"
CUDNN9_FOLDER = "cudnn9-cu12"
#: Python that onnxruntime-gpu >= 1.27 (the CUDA 13 builds) has wheels for (their Requires-Python).
PYTHON_FOR_CUDA_13 = (3, 11)
#: Requires-Dist without extras of onnxruntime-gpu 1.27.0 ... 1.31.1 and onnxruntime 1.27 ... 1.32.0, read
#: from the wheels' METADATA (2026-11-29; 1.17 ... 1.20 also listed coloredlogs and sympy). The no-deps
#: route installs the absent ones besides protobuf; once a runtime is installed, its own metadata
#: (``Host.requires``) is checked at each start instead, so a later release's new requirement is added.
NEW_ORT_REQUIREMENTS = ("flatbuffers", "numpy>=1.21.6", "packaging", "protobuf>=4.25.8")
#: The requirement the no-deps route leaves unmet on purpose (ONNX Runtime does not import it).
UNMET_ON_PURPOSE = "protobuf"

#: Opt-in to replacing an installed ONNX Runtime variant that cannot serve the chosen provider.
REPLACE_ENV = "ORT_TURBO_REPLACE_ORT"
#: The user's request for a runtime the table never picks by itself: its value is a provider key of
#: REQUESTABLE (read by install.py at each launch).
RUNTIME_ENV = "ORT_TURBO_RUNTIME"
#: provider key -> (the one distribution that serves it, the (os, machine) it has wheels for on PyPI).
#: onnxruntime-openvino 1.23.0 (cp310) ... 1.24.1 (cp311-cp313), checked 2026-11-30 with
#: ``pip download --only-binary=:all: --python-version 3.10 ... 3.13 --platform ...``: manylinux_2_28_x86_64
#: and win_amd64 only (no macOS, no aarch64/arm64); older glibc gets only <= 1.17, below its min_ort.
REQUESTABLE = {"openvino": ("onnxruntime-openvino", frozenset({("linux", "x86_64"), ("windows", "x86_64")}))}
#: The variants a request may replace: the plain CPU runtime (what the table installs on a CPU machine).
REPLACEABLE_ON_REQUEST = frozenset({"onnxruntime"})


def normalize(name: str) -> str:
    """PEP 503 name: ``Onnxruntime_GPU`` and ``onnxruntime-gpu`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def version_tuple(text: str | None) -> tuple[int, ...]:
    """``"1.26.0"`` -> (1, 26, 0); ``"2.1.2+cu121"`` -> (2, 1, 2); ``"1.20.0.dev2024"`` -> (1, 20, 0)."""
    if not text:
        return ()
    release = re.match(r"\s*v?(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in release.group(1).split(".")) if release else ()


#: The distributions the table installs by itself (a requested one has its own floor, its row's min_ort).
DEFAULT_PACKAGES = frozenset({"onnxruntime", "onnxruntime-gpu", "onnxruntime-directml"})
#: Oldest ONNX Runtime that runs the artefacts of every provider the default packages serve
#: (SkipGroupNorm came in 1.17).
MIN_ORT = max(version_tuple(p.min_ort) for p in PROVIDERS if p.packages & DEFAULT_PACKAGES)[:2]


def min_ort_for(ep: str) -> tuple[int, ...]:
    """The oldest release (major, minor) that runs ``ep``'s artefacts: MIN_ORT, or the row's own if later."""
    return max(MIN_ORT, version_tuple(provider(ep).min_ort)[:2])


def _fmt(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)


@dataclasses.dataclass(frozen=True)
class Host:
    """What the decision needs to know about the WebUI's environment, as plain data."""

    os: str                                   # "linux", "windows", "darwin"
    python: tuple[int, int] = (3, 10)
    machine: str = "x86_64"                   # the interpreter's architecture: x86_64, arm64 (wheel tags)
    torch: str | None = None                  # torch's version string, e.g. "2.1.2+cu121"
    torch_cuda: tuple[int, ...] | None = None  # CUDA torch was built for, e.g. (12, 1)
    torch_cudnn: int | None = None            # cuDNN major torch loads (8 or 9)
    torch_hip: str | None = None              # ROCm builds
    torch_directml: bool = False              # torch-directml installed (Windows AMD/Intel)
    installed: dict = dataclasses.field(default_factory=dict)  # normalized name -> version
    pins: dict = dataclasses.field(default_factory=dict)       # the WebUI's pins: name -> version
    side_cudnn9: str | None = None            # version in our side folder, if complete
    nvidia_driver: bool | None = None         # an NVIDIA driver is visible (None: not looked)
    requires: dict = dataclasses.field(default_factory=dict)  # installed variant -> its Requires-Dist

    def variants(self) -> dict[str, str]:
        return {name: self.installed[name] for name in ONNXRUNTIME_DISTRIBUTIONS if name in self.installed}

    def protobuf_limit(self) -> tuple[int, ...] | None:
        """The protobuf this WebUI keeps (its pin, else the installed one), if older than ORT 1.27 needs."""
        for source in (self.pins, self.installed):
            found = version_tuple(source.get("protobuf"))
            if found:
                return found if found < PROTOBUF_FOR_NEW_ORT else None
        return None


@dataclasses.dataclass(frozen=True)
class Choice:
    """The ONNX Runtime that suits this host, before looking at what is installed."""

    ep: str                          # the execution provider recipe ORT Turbo will use: cuda, dml, cpu
    package: str                     # distribution to install
    low: tuple[int, ...] = MIN_ORT   # inclusive
    high: tuple[int, ...] | None = None  # exclusive
    cudnn9_side: bool = False        # cuDNN 9 must be installed beside torch's cuDNN 8
    reasons: tuple[str, ...] = ()
    no_deps: bool = False            # install ``package`` with --no-deps (the no-deps route) ...
    deps: tuple[str, ...] = ()       # ... after these, its absent other requirements
    declined: str = ""               # the user's runtime request (RUNTIME_ENV) not followed, and why

    @property
    def requirement(self) -> str:
        spec = f"{self.package}>={_fmt(self.low)}"
        return spec + (f",<{_fmt(self.high)}" if self.high else "")

    def admits(self, version: str) -> bool:
        found = version_tuple(version)
        return bool(found) and found[:len(self.low)] >= self.low and (
            self.high is None or found[:len(self.high)] < self.high)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What install.py does: nothing, install ``requirements``, or report a conflict."""

    choice: Choice
    action: str                      # "ok" | "install" | "conflict"
    install: tuple[str, ...] = ()    # pip requirements for the WebUI's environment
    deps: tuple[str, ...] = ()       # absent requirements of the runtime, installed first (under constraints)
    no_deps: bool = False            # ``install`` goes in with --no-deps (the no-deps route)
    uninstall: tuple[str, ...] = ()  # only with the user's opt-in (REPLACE_ENV)
    side: tuple[str, ...] = ()       # pip requirements installed into our own side folder (cuDNN 9)
    keep: str | None = None          # an installed variant that is kept as it is
    reasons: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()

    @property
    def needs_pip(self) -> bool:
        return bool(self.install or self.deps or self.side or self.uninstall)


def choose(host: Host, runtime: str | None = None) -> Choice:
    """The package, version range and provider for this torch build and OS (the decision table).

    Every row names a package: where no GPU build fits, the CPU runtime does. ``runtime`` is the
    user's request (RUNTIME_ENV), followed where it fits, see :func:`requested`."""
    table = _table(host)
    return requested(host, runtime, table) if runtime else table


def requested(host: Host, runtime: str, table: Choice) -> Choice:
    """The requested runtime's Choice, or the table's own with ``declined`` saying why not.

    Followed only where ORT Turbo runs on the CPU (the table picked the CPU runtime, or DirectML for a
    torch without CUDA or torch-directml), the platform has its wheels, and no variant other than the
    plain CPU runtime (or the requested one) is installed: a GPU runtime is never replaced."""
    asked = f"{RUNTIME_ENV}={runtime}"
    if runtime not in REQUESTABLE:
        return dataclasses.replace(table, declined=f"{asked} is not a runtime ORT Turbo installs (it knows: "
                                                   f"{', '.join(REQUESTABLE)}): ignored, {table.package} kept")
    package, platforms = REQUESTABLE[runtime]
    if (host.os, host.machine) not in platforms:
        why = f"{package} has wheels for x86-64 Linux and Windows only, not {host.os} {host.machine}"
    elif table.ep == "cuda":
        why = f"torch {host.torch} runs on an NVIDIA GPU here and {runtime} is a CPU runtime"
    elif table.ep == "dml" and host.torch_directml:
        why = f"torch-directml runs on the GPU here and {runtime} is a CPU runtime"
    else:
        others = {n: v for n, v in host.variants().items() if n not in REPLACEABLE_ON_REQUEST | {package}}
        if not others:
            row = provider(runtime)
            choice = Choice(runtime, package, min_ort_for(runtime), table.high)  # high: the protobuf cap
            return dataclasses.replace(choice, reasons=(
                f"{asked}: ONNX Runtime's {row.label} provider, {choice.requirement} (it replaces the plain "
                f"CPU onnxruntime if installed: both install the same 'onnxruntime' folder)",))
        installed = ", ".join(f"{n} {v}" for n, v in others.items())
        why = (f"{installed} is installed (perhaps by another extension), and only the plain CPU onnxruntime is "
               f"replaced by {package} (all install the same 'onnxruntime' folder; to switch anyway, uninstall "
               f"{', '.join(others)} from the WebUI's venv and start again)")
    return dataclasses.replace(table, declined=f"{asked} not followed: {why}; the usual decision applies")


def _table(host: Host) -> Choice:
    """The table without a request."""
    why: list[str] = []
    pb = host.protobuf_limit()
    cap = ORT_PROTOBUF_4_AND_CUDA_13 if pb else None
    if pb:
        why.append(f"protobuf stays at {_fmt(pb)} (the WebUI pins it): ONNX Runtime >= 1.27 needs "
                   f"protobuf >= {_fmt(PROTOBUF_FOR_NEW_ORT)}, so the newest usable release is 1.26")

    def cpu(reason: str, *, alone: bool = False) -> Choice:
        """The CPU runtime; ``alone``: the reason is the one line that says what and why."""
        choice = Choice("cpu", "onnxruntime", MIN_ORT, cap)
        if alone:
            below = f" (below 1.27, which would need a newer protobuf than {_fmt(pb)})" if cap else ""
            return dataclasses.replace(choice, reasons=(f"{reason}: CPU runtime {choice.requirement}{below}",))
        return dataclasses.replace(choice, reasons=tuple(why + [f"{reason}: CPU runtime"]))

    cuda = host.torch_cuda
    if host.torch and cuda:
        label = f"torch {host.torch} is built for CUDA {_fmt(cuda)}"
        if host.nvidia_driver is False:
            return cpu(f"torch {host.torch} is a CUDA build, but this machine shows no NVIDIA driver", alone=True)
        cudnn = host.torch_cudnn
        if cuda[0] == 11:
            return Choice("cuda", "onnxruntime-gpu", MIN_ORT, ORT_GPU_CUDA12, False, tuple(why + [
                f"{label}: onnxruntime-gpu 1.17/1.18 are the PyPI builds for CUDA 11 + cuDNN 8"]))
        if cuda[0] == 12:
            high = ORT_PROTOBUF_4_AND_CUDA_13  # 1.27 on links CUDA 13, whatever protobuf does
            if cudnn == 8:
                return Choice("cuda", "onnxruntime-gpu", ORT_GPU_CUDA12, high, True, tuple(why + [
                    f"{label} with cuDNN 8: onnxruntime-gpu 1.19-1.26 link CUDA 12 + cuDNN 9 and no "
                    f"PyPI build links cuDNN 8, so cuDNN 9 is installed into ORT Turbo's own folder "
                    f"(torch keeps its cuDNN 8; the two have different library names)"]))
            return Choice("cuda", "onnxruntime-gpu", ORT_GPU_CUDA12, high, False, tuple(why + [
                f"{label} with cuDNN {cudnn or 9}: onnxruntime-gpu 1.19-1.26 link CUDA 12 + cuDNN 9"]))
        if cuda[0] >= 13:
            if host.python < PYTHON_FOR_CUDA_13:
                return cpu(f"{label}: onnxruntime-gpu >= 1.27 (the CUDA 13 builds) has wheels for Python >= "
                           f"{_fmt(PYTHON_FOR_CUDA_13)} only, and this WebUI runs Python {_fmt(host.python)}")
            if not cap:
                return Choice("cuda", "onnxruntime-gpu", ORT_PROTOBUF_4_AND_CUDA_13, None, False, tuple(why + [
                    f"{label}: onnxruntime-gpu >= 1.27 link CUDA 13 + cuDNN 9"]))
            wanted = [r for r in NEW_ORT_REQUIREMENTS if requirement_name(r) != UNMET_ON_PURPOSE]
            absent, clashing = unmet_requirements(wanted, host)
            if clashing:
                return cpu(f"{label}: onnxruntime-gpu >= 1.27 also needs {', '.join(clashing)}, which would "
                           f"change an installed package")
            return Choice("cuda", "onnxruntime-gpu", ORT_PROTOBUF_4_AND_CUDA_13, None, False, (
                f"{label}: onnxruntime-gpu >= 1.27 (CUDA 13 + cuDNN 9) is installed with --no-deps, since it "
                f"asks for protobuf >= {_fmt(PROTOBUF_FOR_NEW_ORT)} but never imports it: the WebUI keeps "
                f"protobuf {_fmt(pb)}"
                + (f"; its other requirements that are missing go in first: {', '.join(absent)}" if absent else ""),),
                no_deps=True, deps=absent)
        return cpu(f"{label}, which no onnxruntime-gpu on PyPI supports")
    if host.torch_hip:
        return cpu(f"torch {host.torch} is a ROCm build; ONNX Runtime's ROCm/MIGraphX builds are not on PyPI "
                   f"and ORT Turbo has no ROCm recipe")
    if host.os == "windows":
        return Choice("dml", "onnxruntime-directml", MIN_ORT, cap, False, tuple(why + [
            f"Windows with {'torch-directml' if host.torch_directml else 'a torch without CUDA'}: "
            f"onnxruntime-directml runs on any DirectX 12 GPU, and on the CPU"]))
    return cpu(f"torch {host.torch} has no CUDA" if host.torch else "no torch is installed")


def decide(host: Host, *, replace: bool = False, python: str = "PYTHON", runtime: str | None = None) -> Decision:
    """Compare :func:`choose` with the installed variants. ``python`` is quoted into the advice.

    ``replace`` is the user's opt-in to uninstall installed variants that cannot serve the choice;
    ``runtime`` the user's request for a runtime (RUNTIME_ENV), which replaces the plain CPU runtime.
    """
    choice = choose(host, runtime)
    reasons = list(choice.reasons) + ([choice.declined] if choice.declined else [])
    pip = f'"{python}" -m pip'
    side = (CUDNN9_REQUIREMENT,) if choice.cudnn9_side and not host.side_cudnn9 else ()
    if choice.cudnn9_side and host.side_cudnn9:
        reasons.append(f"cuDNN {host.side_cudnn9} is in place in ORT Turbo's folder")
    variants = host.variants()
    route = dict(deps=choice.deps, no_deps=choice.no_deps)
    wanted = choice.package
    if not variants:
        return Decision(choice, "install", install=(choice.requirement,), side=side, **route,
                        reasons=tuple(reasons + [f"no ONNX Runtime is installed: installing {choice.requirement}"]))
    kept = None
    if list(variants) == [wanted] and choice.admits(variants[wanted]):
        kept = wanted
        reasons.append(f"{wanted} {variants[wanted]} is installed and fits")
    else:  # something else is installed: keep it if it serves the chosen provider
        servers = {n: v for n, v in variants.items() if _serves(n, v, choice, host)}
        if len(variants) == 1 and servers:
            (kept, version), = servers.items()
            reasons.append(f"{kept} {version} is installed (by another extension or by hand) and can serve "
                           f"the {choice.ep} provider: kept as it is")
    if kept:
        # a runtime installed with --no-deps (here, by hand or by another extension) may lack a requirement
        absent, clashing = unmet_requirements(
            [r for r in host.requires.get(kept, ()) if requirement_name(r) != UNMET_ON_PURPOSE], host)
        if absent:
            reasons.append(f"{kept} needs {', '.join(absent)}, which are missing: installing them")
        if clashing:
            reasons.append(f"{kept} asks for {', '.join(clashing)}; left as it is (a package the WebUI has "
                           f"is never changed)")
        return Decision(choice, "install" if side or absent else "ok", side=side, deps=absent, keep=kept,
                        reasons=tuple(reasons))
    installed = ", ".join(f"{n} {v}" for n, v in variants.items())
    if choice.ep in REQUESTABLE:  # requested() left only the plain CPU runtime or an old copy of the package
        replaced = tuple(variants) if set(variants) != {wanted} else ()
        reasons.append(f"replacing {installed} with {choice.requirement}" if replaced else
                       f"{installed} is older than {_fmt(choice.low)}, which the {choice.ep} provider needs: "
                       f"upgrading it")
        return Decision(choice, "install", install=(choice.requirement,), uninstall=replaced, reasons=tuple(reasons))
    problem = _conflict_text(variants, choice, host)
    commands = [f"{pip} uninstall -y {' '.join(variants)}"]
    if choice.deps:
        commands.append(f"{pip} install {quoted(choice.deps)}")
    commands.append(f"{pip} install {'--no-deps ' if choice.no_deps else ''}{quoted([choice.requirement])}")
    also_cpu = " (other extensions that import onnxruntime keep working; onnxruntime-gpu and " \
               "onnxruntime-directml also run on the CPU)" if choice.ep != "cpu" else ""
    advice = (
        f"Installed: {installed}. {problem}",
        "All ONNX Runtime packages share one 'onnxruntime' module folder, so ORT Turbo does not install "
        "a second one on top, and never uninstalls one that another extension may use.",
        f"To switch{also_cpu}: " + " && ".join(commands),
        f"or start the WebUI once with {REPLACE_ENV}=1 and ORT Turbo does exactly that.",
    )
    if replace:
        reasons.append(f"{REPLACE_ENV}=1: replacing {installed} with {choice.requirement}")
        return Decision(choice, "install", install=(choice.requirement,), uninstall=tuple(variants), side=side,
                        **route, reasons=tuple(reasons))
    return Decision(choice, "conflict", reasons=tuple(reasons + [problem]), advice=advice)


def quoted(requirements) -> str:
    """Requirements as pip's command line takes them (``>`` and ``<`` would redirect in a shell)."""
    return " ".join(f'"{r}"' for r in requirements)


# ---------------------------------------------------------------------------------------------
# Requirements (the few specifier forms ONNX Runtime's metadata uses; no dependency on packaging)

_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*\(?([^;)]*)\)?\s*(?:;(.*))?$")
_CLAUSE = re.compile(r"\s*(~=|===|==|!=|>=|<=|>|<)\s*([^\s,]+)\s*$")


def requirement_name(requirement: str) -> str:
    found = _REQUIREMENT.match(requirement)
    return normalize(found.group(1)) if found else ""


def satisfies(version: str, specifier: str) -> bool:
    """Whether ``version`` meets a specifier such as ``>=1.21.6,<2`` (``~=``, ``==1.2.*`` included)."""
    have = version_tuple(version)
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        found = _CLAUSE.match(clause)
        if not found:
            return False  # a form this does not read: not known to be met
        op, text = found.groups()
        if text.endswith(".*"):
            prefix = version_tuple(text[:-2])
            ok = have[:len(prefix)] == prefix
            if op in ("==", "!=") and ok != (op == "=="):
                return False
            continue
        want = version_tuple(text)
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        ok = {"==": a == b, "===": a == b, "!=": a != b, ">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b,
              "~=": a >= b and have[:len(want) - 1] == want[:-1]}[op]
        if not ok:
            return False
    return True


def unmet_requirements(requirements, host: Host) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(absent, clashing): requirements whose distribution is neither installed nor pinned, which pip
    may add; and those that name an installed or pinned distribution at a version they exclude, which
    would change a package the WebUI has. Requirements under an environment marker (extras, other
    platforms) are left out: the measured ONNX Runtime metadata has none outside extras."""
    absent, clashing = [], []
    for requirement in requirements:
        found = _REQUIREMENT.match(requirement)
        if not found or found.group(3):
            continue
        name, specifier = normalize(found.group(1)), found.group(2).strip()
        have = host.installed.get(name) or host.pins.get(name)
        if specifier and have and not satisfies(have, specifier):
            clashing.append(f"{requirement.strip()} (the WebUI has {have})")
        elif have is None:  # a pinned one is the WebUI's to install, at its pin
            absent.append(requirement.strip())
    return tuple(absent), tuple(clashing)


def _serves(name: str, version: str, choice: Choice, host: Host) -> bool:
    """Whether an installed variant runs the chosen provider's artefacts in this WebUI."""
    if choice.ep not in served_by(name):
        return False
    found = version_tuple(version)
    if found[:2] < min_ort_for(choice.ep):
        return False
    if name.startswith("ort-nightly"):
        return choice.ep == "cpu"  # a nightly's CUDA build cannot be read from its metadata
    if choice.ep == "cuda":
        return choice.admits(version)  # the CUDA/cuDNN major the version links must match torch's
    return True


def _conflict_text(variants: dict, choice: Choice, host: Host) -> str:
    if len(variants) > 1:
        return (f"{' and '.join(variants)} are installed together: their files overwrite each other in "
                f"one 'onnxruntime' folder, and uninstalling one breaks the other")
    (name, version), = variants.items()
    if version_tuple(version)[:2] < MIN_ORT:
        return f"{name} {version} is older than {_fmt(MIN_ORT)}, which ORT Turbo's artefacts need"
    if choice.ep == "cuda" and name in ("onnxruntime-gpu", "ort-nightly-gpu"):
        return (f"{name} {version} does not link the CUDA {host.torch_cuda[0]} / cuDNN that torch "
                f"{host.torch} uses (wanted: {choice.requirement}), so its CUDA provider would not load")
    return f"{name} {version} has no {choice.ep.upper()} provider (wanted: {choice.requirement})"


# ---------------------------------------------------------------------------------------------
# Reading the host (cheap: metadata and a few small files, no imports of torch or onnxruntime)


def read_pins(path: str | os.PathLike | None) -> dict[str, str]:
    """``name==version`` lines of a requirements file (the WebUI's requirements_versions.txt)."""
    pins: dict[str, str] = {}
    if not path:
        return pins
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return pins
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        found = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;,]+)", line)
        if found:
            pins[normalize(found.group(1))] = found.group(2)
    return pins


def installed_distributions() -> dict[str, str]:
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        # "numpy-1.26.2.dist-info": name and version from the folder name, without parsing METADATA
        # (parsing ~150 METADATA files costs 0.3 s, the folder names nothing)
        folder = getattr(dist, "_path", None)
        parsed = re.fullmatch(r"([A-Za-z0-9_.]+?)-([0-9][^-]*)\.dist-info", folder.name) if folder else None
        if parsed:
            name, version = parsed.groups()
        else:
            name = dist.metadata["Name"] if dist.metadata else None
            version = dist.version
        if name and normalize(name) not in found:  # the first on sys.path is the one imported
            found[normalize(name)] = version
    return found


def _torch_build(installed: dict) -> tuple[tuple | None, int | None, str | None]:
    """CUDA version, cuDNN major and HIP version of the installed torch, read from its files."""
    from importlib import metadata

    if "torch" not in installed:
        return None, None, None
    try:
        dist = metadata.distribution("torch")
    except metadata.PackageNotFoundError:
        return None, None, None
    cuda = hip = None
    try:
        text = Path(dist.locate_file("torch/version.py")).read_text(errors="replace")
        found = re.search(r"^cuda\b[^=]*=\s*['\"]([\d.]+)['\"]", text, re.M)
        cuda = version_tuple(found.group(1)) if found else None
        found = re.search(r"^hip\b[^=]*=\s*['\"]([^'\"]+)['\"]", text, re.M)
        hip = found.group(1) if found else None
    except OSError:
        local = re.search(r"\+cu(\d+)(\d)$", installed["torch"])
        cuda = (int(local.group(1)), int(local.group(2))) if local else None
    cudnn = None
    if cuda:
        for requirement in dist.requires or []:
            pinned = re.match(r"nvidia-cudnn-cu\d+\s*==\s*(\d+)", requirement)
            if pinned:
                cudnn = int(pinned.group(1))
                break
        if cudnn is None:
            for major in (9, 8):  # Windows wheels carry the DLLs in torch/lib
                if Path(dist.locate_file(f"torch/lib/cudnn64_{major}.dll")).exists():
                    cudnn = major
                    break
        if cudnn is None:
            for name in ("nvidia-cudnn-cu12", "nvidia-cudnn-cu11", "nvidia-cudnn-cu13"):
                if name in installed:
                    cudnn = version_tuple(installed[name])[0]
                    break
        if cudnn is None:  # torch < 2.4 shipped cuDNN 8, later releases cuDNN 9
            cudnn = 8 if version_tuple(installed["torch"])[:2] < (2, 4) else 9
    return cuda, cudnn, hip


#: Files an NVIDIA driver leaves (Linux, containers with the NVIDIA runtime, WSL2, Windows): seeing
#: one is enough; none of them and no ``nvidia-smi`` on PATH means no GPU that ORT's CUDA provider could use.
NVIDIA_DRIVER_FILES = {
    "linux": ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/usr/lib/wsl/lib/libcuda.so.1",
              "/usr/lib/wsl/lib/nvidia-smi"),
    "windows": ("{SystemRoot}/System32/nvcuda.dll", "{SystemRoot}/System32/nvidia-smi.exe"),
    "darwin": (),
}


def nvidia_driver_visible(os_name: str, *, environ=None, exists=os.path.exists, which=None) -> bool:
    """Whether this machine shows an NVIDIA driver: a few path checks, no GPU probed, nothing imported."""
    import shutil

    environ = os.environ if environ is None else environ
    root = environ.get("SystemRoot", "C:/Windows")
    if any(exists(path.format(SystemRoot=root)) for path in NVIDIA_DRIVER_FILES.get(os_name, ())):
        return True
    return os_name != "darwin" and (which or shutil.which)("nvidia-smi") is not None


def interpreter_machine(platform_tag: str | None = None) -> str:
    """The architecture wheels must be built for: that of this interpreter (``sysconfig.get_platform()``:
    "linux-x86_64", "win-amd64", "macosx-11.0-arm64", "win-arm64"), not the machine's (an x64 Python
    emulated on Windows ARM takes x64 wheels)."""
    import sysconfig

    machine = (platform_tag or sysconfig.get_platform()).rsplit("-", 1)[-1].lower()
    return {"amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64"}.get(machine, machine)


def _variant_requires(installed: dict) -> dict[str, tuple[str, ...]]:
    """Requires-Dist of the installed ONNX Runtime variants (one or two METADATA files)."""
    from importlib import metadata

    found = {}
    for name in ONNXRUNTIME_DISTRIBUTIONS:
        if name in installed:
            try:
                found[name] = tuple(metadata.requires(name) or ())
            except metadata.PackageNotFoundError:
                pass
    return found


def probe_host(*, pins_file: str | os.PathLike | None = None, side_cudnn9: str | None = None) -> Host:
    """Read this interpreter's environment into a :class:`Host`, without importing torch."""
    installed = installed_distributions()
    cuda, cudnn, hip = _torch_build(installed)
    os_name = {"win32": "windows", "darwin": "darwin"}.get(sys.platform, "linux")
    return Host(os=os_name, python=sys.version_info[:2], machine=interpreter_machine(), torch=installed.get("torch"),
                torch_cuda=cuda, torch_cudnn=cudnn, torch_hip=hip, torch_directml="torch-directml" in installed,
                installed=installed, pins=read_pins(pins_file), side_cudnn9=side_cudnn9,
                nvidia_driver=nvidia_driver_visible(os_name) if cuda else None,
                requires=_variant_requires(installed))


def freeze_constraints(installed: dict, *, pins: dict | None = None, release: tuple[str, ...] = ()) -> list[str]:
    """``name==version`` for every installed distribution, and every pin not installed, except
    ``release``: given to pip as constraints, pip may add packages but cannot change one that is there,
    and adds a pinned one only at its pin."""
    keep_free = {normalize(n) for n in release}
    lines = []
    for name, version in sorted({**(pins or {}), **installed}.items()):
        if name in keep_free:
            continue
        if re.fullmatch(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[A-Za-z0-9.]+)?", version):
            lines.append(f"{name}=={version}")
    return lines
