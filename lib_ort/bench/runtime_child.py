"""The timing child: ``python -m lib_ort.bench.runtime_child JOB.json``, one ONNX model on one session plan.

A provider that ships in its own ``onnxruntime`` distribution (onnxruntime-openvino) cannot be imported
beside the toolchain's onnxruntime, so the benchmark times it in another interpreter, in this child. The
child is generic: it carries out whatever session plan it is given (``lib_ort.sessions.SessionPlan`` as
data), so the protocol can be tested with the CPU provider in any interpreter.

It imports only the standard library, numpy, onnxruntime and ``lib_ort.sessions`` (free of torch): the
runtime interpreter needs nothing else. The job (JSON) names the model, the plan, an ``.npz`` of inputs
(by graph input name), ``runs`` and ``warmup``; the child writes the outputs (``.npz``, in graph output
order) and ``result.json``: session load time, the first call, every timed call, its own peak resident
memory and the providers the session actually got. A session ORT quietly built on another provider is
refused (``lib_ort.sessions.create_session``), so a fallback is never timed under the provider's name.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (MiB): VmHWM on Linux, else ``resource``'s maximum (None where
    neither exists)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 2**20 if sys.platform == "darwin" else usage / 1024.0


def run(job: dict) -> dict:
    """Load the session, run it ``warmup`` times (the first timed apart: OpenVINO compiles then) and
    ``runs`` times timed; the outputs of the last call go to ``job["outputs"]``."""
    import numpy as np
    import onnxruntime as ort

    from lib_ort.sessions import SessionPlan, create_session

    plan = SessionPlan(**job["plan"])
    # JSON made the (name, options) pairs lists; ORT takes only tuples (else it falls back to the CPU provider)
    plan.providers = [p if isinstance(p, str) else tuple(p) for p in plan.providers]
    start = time.perf_counter()
    session = create_session(job["model"], plan)
    load_s = time.perf_counter() - start
    with np.load(job["inputs"]) as stored:
        given = {name: stored[name] for name in stored.files}
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in given]
    if missing:
        raise ValueError(f"the inputs file has no {', '.join(missing)} (it has {', '.join(given) or 'nothing'})")
    feed = {n: given[n] for n in names}
    start = time.perf_counter()
    outputs = session.run(None, feed)
    first_s = time.perf_counter() - start
    for _ in range(max(job["warmup"], 1) - 1):
        session.run(None, feed)
    samples = []
    for _ in range(job["runs"]):
        start = time.perf_counter()
        outputs = session.run(None, feed)
        samples.append((time.perf_counter() - start) * 1000.0)
    np.savez(job["outputs"], *outputs)
    return {
        "providers": session.get_providers(), "onnxruntime": ort.__version__, "python": sys.executable,
        "load_s": round(load_s, 3), "first_call_s": round(first_s, 3),
        "median_ms": statistics.median(samples) if samples else None,
        "min_ms": min(samples, default=None), "max_ms": max(samples, default=None),
        "samples_ms": [round(x, 2) for x in samples], "runs": job["runs"], "warmup": max(job["warmup"], 1),
        "peak_rss_mb": peak_rss_mb(), "imported_torch": "torch" in sys.modules,
    }


def main(job_path: str) -> int:
    """Write ``result.json`` beside the job: the result, or ``{"error": ...}`` (exit code 2) saying why."""
    job = json.loads(Path(job_path).read_text())
    result_path = Path(job["result"])
    try:
        result = run(job)
        code = 0
    except Exception as exc:  # reported to the parent, which raises it with the log's tail
        result = {"error": f"{type(exc).__name__}: {exc}"}
        code = 2
    staged = result_path.with_suffix(".part")
    staged.write_text(json.dumps(result))
    os.replace(staged, result_path)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
