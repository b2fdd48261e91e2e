"""Timing a provider that lives in another interpreter: OpenVINO beside the CPU provider.

onnxruntime-openvino installs the same ``onnxruntime`` module as the toolchain's onnxruntime, so the two
cannot share an environment: the benchmark times the OpenVINO artefact in a child process of a second
interpreter (``--runtime-python``, default ``$ORT_TURBO_OPENVINO_PYTHON``) that has onnxruntime-openvino
and numpy, through ``lib_ort.bench.runtime_child``. The parent writes the inputs, the child loads the
session, times it and writes back its timings, its peak memory and the outputs, which the parent compares
with PyTorch. The child's timings are a block of their own, after the in-process ones, never interleaved
with them: the output says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import OrtTurboError
from ..providers import provider

#: the interpreter with onnxruntime-openvino, when --runtime-python is not given
RUNTIME_PYTHON_ENV = "ORT_TURBO_OPENVINO_PYTHON"
#: what --openvino-precision takes: auto = bf16 where the CPU has native bf16, else fp32
OPENVINO_PRECISIONS = ("auto", "bf16", "fp32", "both")
#: how the in-process and the child's timings relate, for the output
CHILD_METHOD = ("timed in its own process (the runtime interpreter's onnxruntime), as a block after the PyTorch "
                "and CPU-provider timings, not interleaved with them")


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU (or the ``/proc/cpuinfo`` text ``cpuinfo``) computes bf16 natively; False where it
    cannot be told (``lib_ort.cpu_features``, what the WebUI's "auto" reads too)."""
    from ..cpu_features import has_native_bf16, parse_cpuinfo, this_cpu_flags

    return has_native_bf16(this_cpu_flags() if cpuinfo is None else parse_cpuinfo(cpuinfo))


def openvino_precisions(asked: str | None, native: bool | None = None) -> list[str]:
    """The precisions to time for ``--openvino-precision``: by default both where the CPU has native bf16
    (the comparison that decides), else fp32 alone; ``auto`` is the one a user would get."""
    native = native_bf16() if native is None else native
    if asked is None:
        asked = "both" if native else "fp32"
    if asked not in OPENVINO_PRECISIONS:
        raise ValueError(f"--openvino-precision must be one of {', '.join(OPENVINO_PRECISIONS)}, got {asked!r}")
    if asked == "both":
        return ["bf16", "fp32"]
    if asked == "auto":
        return ["bf16" if native else "fp32"]
    return [asked]


def runtime_python(given: str | None = None) -> str:
    """The runtime interpreter: ``given``, else ``$ORT_TURBO_OPENVINO_PYTHON``, else this one; as an absolute
    path (not resolved: a venv's python is a link that must stay the venv's), since the child it starts
    runs in another folder and ``.venv-openvino/bin/python`` would not be found from there."""
    return os.path.abspath(str(given or os.environ.get(RUNTIME_PYTHON_ENV) or sys.executable))


def automatic_provider(runtime_python_path: str | None = None) -> dict:
    """What the WebUI's "Automatic" would pick on this machine (``providers.automatic``): from the providers
    this interpreter's onnxruntime offers (what a default install has), plus those of ``runtime_python_path``'s
    when one is given (e.g. onnxruntime-openvino's venv), and whether the CPU has native bf16. Returns
    {"ep", "offered", "native_bf16", "python"} (``python``: where ``ep`` runs, None for this interpreter)."""
    from .. import providers
    from ..cpu_features import has_native_bf16, this_cpu_flags
    from ..sessions import import_onnxruntime

    names = set(import_onnxruntime().get_available_providers())
    own = {p.key for p in providers.PROVIDERS if p.ort_name in names}
    other, python = set(), None
    if runtime_python_path:
        python = runtime_python(runtime_python_path)
        other = {p.key for p in providers.PROVIDERS if p.ort_name in check_runtime(python, "cpu")["providers"]} - own
    bf16 = has_native_bf16(this_cpu_flags())
    ep = providers.automatic(own | other, bf16)
    return {"ep": ep, "offered": sorted(own | other), "native_bf16": bf16, "python": python if ep in other else None}


_PROBE = ("import json, numpy, onnxruntime as o; "
          "print(json.dumps({'onnxruntime': o.__version__, 'providers': o.get_available_providers()}))")


def check_runtime(python: str, ep: str = "openvino") -> dict:
    """What ``python``'s onnxruntime is ({"onnxruntime", "providers"}); ``OrtTurboError`` saying what to
    install unless it imports numpy and onnxruntime and offers ``ep``'s provider. Seconds: run it before the
    long work."""
    wanted = provider(ep).ort_name
    install = (f"pip install onnxruntime-openvino in a separate venv and pass its python (or set "
               f"{RUNTIME_PYTHON_ENV})")
    if not Path(python).exists():
        raise OrtTurboError(f"--runtime-python: {python} does not exist; {install}")
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OrtTurboError(f"--runtime-python: {python} could not be run ({exc}); {install}") from exc
    found = None
    if done.returncode == 0:
        try:
            found = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            found = None
    if found is None or wanted not in found["providers"]:
        has = (f"its onnxruntime {found['onnxruntime']} has {', '.join(found['providers'])}" if found else
               f"it cannot import numpy and onnxruntime ({(done.stderr.strip().splitlines() or ['?'])[-1]})")
        raise OrtTurboError(f"--runtime-python: {python} has no onnxruntime with {wanted} ({has}); {install}")
    return found


def openvino_plan(precision: str, threads: int) -> dict:
    """The OpenVINO session plan in ``precision`` (bf16 or fp32), as data for the child: the WebUI's own."""
    from ..sessions import plan_session

    return plan_session("openvino", intra_op_threads=threads, openvino_precision=precision).to_dict()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def time_in_runtime(python: str, model_path, plan: dict, feeds: dict, *, runs: int, warmup: int,
                    timeout: float | None = None, label: str = "the runtime child") -> tuple[dict, list]:
    """Time ``model_path`` on ``plan`` in ``python`` (``runtime_child``): its result (load_s, first_call_s,
    median/min/max/samples in ms, peak_rss_mb, providers) and the outputs of its last call (numpy arrays,
    in graph output order). ``feeds`` maps graph input names to numpy arrays. ``OrtTurboError`` with the
    child's reason (its fallback refusal included) and its log's tail if it fails."""
    from ..optimize import Toolchain

    python = runtime_python(python)  # absolute: the child starts in its own folder
    with tempfile.TemporaryDirectory(prefix="ort-turbo-runtime-") as tmp:
        work = Path(tmp)
        np.savez(work / "inputs.npz", **{name: np.ascontiguousarray(a) for name, a in feeds.items()})
        job = {"model": str(model_path), "plan": plan, "runs": int(runs), "warmup": int(warmup),
               "inputs": str(work / "inputs.npz"), "outputs": str(work / "outputs.npz"),
               "result": str(work / "result.json")}
        (work / "job.json").write_text(json.dumps(job))
        log_path = work / "child.log"
        with open(log_path, "w") as log:
            try:  # the child imports lib_ort from this checkout (Toolchain's PYTHONPATH), whatever its python
                done = subprocess.run([python, "-m", "lib_ort.bench.runtime_child", str(work / "job.json")],
                                      stdout=log, stderr=subprocess.STDOUT, cwd=tmp, timeout=timeout,
                                      env=Toolchain(python=python).environment())
            except subprocess.TimeoutExpired:
                raise OrtTurboError(f"{label} ran past {timeout:.0f} s and was stopped") from None
        result_path = Path(job["result"])
        if not result_path.exists():
            raise OrtTurboError(f"{label} ended without a result (exit code {done.returncode}). Last lines of "
                                f"its log:\n{_tail(log_path)}")
        result = json.loads(result_path.read_text())
        if "error" in result:
            raise OrtTurboError(f"{label} failed: {result['error']}\nLast lines of its log:\n{_tail(log_path)}")
        with np.load(job["outputs"]) as stored:
            outputs = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    return result, outputs


def child_entry(result: dict, precision: str) -> dict:
    """The JSON entry of one child run: the timing as the in-process entries have it, plus what only the
    child knows (session load, first call, its peak memory, the providers it got)."""
    return {"median_ms": round(result["median_ms"], 2),
            "spread_ms": [round(result["min_ms"], 2), round(result["max_ms"], 2)],
            "samples_ms": result["samples_ms"], "precision": precision,
            "load_s": result["load_s"], "first_call_s": result["first_call_s"],
            "peak_rss_mb": None if result["peak_rss_mb"] is None else round(result["peak_rss_mb"], 1),
            "providers": result["providers"], "onnxruntime": result["onnxruntime"], "own_process": True}


def side_by_side_table(rows: list[dict], baseline: str, error_label: str) -> str:
    """Markdown: one row per configuration (``config, median_ms, spread_ms, speedup, error`` and, for the
    child's rows, ``load_s, first_call_s, peak_rss_mb``), speed-ups over ``baseline``."""
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    lines = [f"| configuration | median ms (min–max) | speed-up over {baseline} | {error_label} | session load s | "
             "first call s | peak RSS MB | timed |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["spread_ms"]
        lines.append(f"| {r['config']} | {r['median_ms']:.1f} ({lo:.1f}–{hi:.1f}) | {r['speedup']:.2f}x | {r['error']} | "
                     f"{fmt(r.get('load_s'), '.2f')} | {fmt(r.get('first_call_s'), '.2f')} | "
                     f"{fmt(r.get('peak_rss_mb'), '.0f')} | {'own process' if r.get('own_process') else 'this process'} |")
    return "\n".join(lines)
