"""Time one UNet call: the WebUI's PyTorch paths against ONNX Runtime, on the same inputs and weights.

The model is a built-in architecture with random weights (fixed seed), so the numbers need no
download. Export and optimization are cached by the weights' content hash. Each timing is the
median of ``runs`` calls after ``warmup`` calls, the configurations interleaved; the spread (min..max)
is reported beside it. The speed-up is against the faster of the WebUI's two CPU attention paths
(SDPA, InvokeAI: see ``baselines.py``), which the result names; ldm's plain eager is reported beside it.
"""

from __future__ import annotations

import gc
import time
from types import SimpleNamespace

import torch

from ..describe import describe_unet, state_dict_digest
from ..graph import op_counts
from ..optimize import Toolchain
from ..memory import release_memory
from ..pipeline import ensure_export, export_needed, prepare
from ..registry import Registry
from .architectures import ARCHITECTURES, build_unet, example_inputs
from .baselines import baselines_for, fastest_baseline, run_as
from .memory import TreeMemory
from .runtime import (CHILD_METHOD, check_runtime, child_entry, openvino_plan, openvino_precisions,
                      runtime_python, side_by_side_table, time_in_runtime)
from .timing import peak_rss_mb, rel_err, time_calls, time_interleaved

#: ops that show a recipe worked (the rest of the graph's op counts are left out of the report)
FUSED_OPS = ("MultiHeadAttention", "Attention", "GroupNorm", "SkipGroupNorm", "NhwcConv", "BiasSplitGelu",
             "BiasAdd", "LayerNormalization", "SkipLayerNormalization", "Gelu", "FastGelu", "BiasGelu")


def run_bench(arch: str, ep: str = "cpu", *, batch: int = 1, height: int | None = None, width: int | None = None,
              seq: int = 77, runs: int = 5, warmup: int = 1, root=None, unfused: bool = False, seed: int = 0,
              interleave: bool = False, toolchain: Toolchain = Toolchain(), runtime_python_path: str | None = None,
              openvino_precision: str | None = None, progress=None) -> dict:
    """One UNet call, the WebUI's PyTorch paths against ORT. By default in the order that holds the least
    memory at once: the PyTorch paths are timed (interleaved among themselves) and the model traced, then
    dropped before the optimization child starts and the ORT session loads. ``interleave`` keeps the model
    and times every path and ORT interleaved (fairer against a drifting machine, but the model and the
    session are held together). ``peak_rss_mb`` is the peak of the whole process tree (this process and
    the child together), sampled; ``memory`` has it per phase and per process.

    ``ep="openvino"`` times the CPU recipe as above, then the OpenVINO artefact in each precision of
    ``openvino_precision`` (``runtime.openvino_precisions``) in a child of ``runtime_python_path`` (the
    interpreter with onnxruntime-openvino, checked before anything else), after the rest: ``openvino``
    has each precision's timing, error, session load, first call and the child's peak memory, ``table``
    all configurations side by side."""
    openvino = None
    if ep == "openvino":
        python = runtime_python(runtime_python_path)
        openvino = {"python": python, "precisions": openvino_precisions(openvino_precision),
                    "runtime": check_runtime(python, ep)}
    with TreeMemory() as memory:
        result = _run_bench(memory, arch, ep, batch=batch, height=height, width=width, seq=seq, runs=runs,
                            warmup=warmup, root=root, unfused=unfused, seed=seed, interleave=interleave,
                            toolchain=toolchain, openvino=openvino, progress=progress)
    result["memory"] = memory.report()
    result["peak_rss_mb"] = result["memory"]["peak_rss_mb"]
    result["optimize_peak_rss_mb"] = next((p["hwm_mb"] for p in result["memory"].get("processes", ())
                                           if p["name"] == "lib_ort.olive_child"), None)
    return result


def _run_bench(memory, arch, ep, *, batch, height, width, seq, runs, warmup, root, unfused, seed, interleave,
               toolchain, openvino, progress) -> dict:
    from ..unet import OrtUnet

    spec = ARCHITECTURES[arch]
    latent_h = (height // 8) if height else spec.latent_size
    latent_w = (width // 8) if width else spec.latent_size
    registry = Registry(root)
    memory.phase("build")
    model = build_unet(arch, seed=seed)
    description = describe_unet(model)
    checkpoint = {"hash": state_dict_digest(model), "name": f"{arch} (random weights, seed {seed})"}
    inputs = example_inputs(model, batch, latent_h, latent_w, seq, seed=seed)
    args = (inputs["x"], inputs["timesteps"], inputs["context"])
    kwargs = {"y": inputs["y"]} if "y" in inputs else {}
    requested = ep
    ep = "cpu" if openvino is not None else ep  # OpenVINO: the CPU recipe in this process, then OpenVINO's
    label = f"ORT {ep} recipe"

    memory.phase("torch")
    with torch.no_grad():
        ref = model(**inputs)
        calls = {name: run_as(model, forwards, lambda: model(**inputs))
                 for name, forwards in baselines_for(model).items()}
        errors = {name: rel_err(call(), ref) for name, call in calls.items()}
        timings = {} if interleave else time_interleaved(calls, runs, warmup)
    if any(export_needed(registry, checkpoint, e) for e in {ep, requested}):
        memory.phase("export")
        ensure_export(model, registry, checkpoint, progress=progress)
    if not interleave:
        del model, calls
        release_memory()
    memory.phase("optimize")
    prepared = prepare(None, registry, checkpoint, ep, toolchain=toolchain, progress=progress)
    if openvino is not None:
        openvino["prepared"] = prepare(None, registry, checkpoint, requested, toolchain=toolchain, progress=progress)

    memory.phase("ort")
    ort_unet = OrtUnet(prepared.artefact)
    with torch.no_grad():
        out = ort_unet(*args, **kwargs)
        ort_call = lambda: ort_unet(*args, **kwargs)  # noqa: E731
        if interleave:
            timings = time_interleaved({**calls, label: ort_call}, runs, warmup)
        else:
            timings[label] = time_calls(ort_call, runs, warmup)
    ort_t = timings[label]
    torch_medians = {name: t["median_ms"] for name, t in timings.items() if name != label}
    baseline = fastest_baseline(torch_medians)
    eager = next(iter(torch_medians))  # ldm's own forward (first in ``BASELINES``)
    result = {
        "arch": arch, "family": description.family.value, "ep": ep, "batch": batch,
        "height": latent_h * 8, "width": latent_w * 8, "sequence": seq,
        # the speed-up is against the faster WebUI path, named in ``baseline``
        "baseline": baseline, "torch_ms": round(torch_medians[baseline], 2), "ort_ms": round(ort_t["median_ms"], 2),
        "speedup": round(torch_medians[baseline] / ort_t["median_ms"], 3),
        "speedup_over_eager": round(torch_medians[eager] / ort_t["median_ms"], 3),
        "pytorch": {name: {"median_ms": round(t["median_ms"], 2),
                           "spread_ms": [round(t["min_ms"], 2), round(t["max_ms"], 2)],
                           "rel_err": errors[name]} for name, t in timings.items() if name != label},
        "interleaved": interleave,
        "rel_err": rel_err(out, ref),
        "fused_ops": {k: v for k, v in prepared.artefact.manifest["fused_ops"].items() if k in FUSED_OPS},
        "export_s": prepared.export_s, "optimize_s": prepared.optimize_s,
        "artefact_cached": prepared.artefact_cached, "artefact": prepared.artefact.id,
        "torch_spread_ms": [round(timings[baseline]["min_ms"], 2), round(timings[baseline]["max_ms"], 2)],
        "ort_spread_ms": [round(ort_t["min_ms"], 2), round(ort_t["max_ms"], 2)],
        "runs": runs, "warmup": warmup, "threads": torch.get_num_threads(),
    }
    del ort_unet
    if interleave:
        del model, calls
    release_memory()
    if unfused and prepared.export_folder is not None:
        from ..sessions import create_session, plan_session

        memory.phase("ort-unfused")
        session = create_session(prepared.export_folder / "model.onnx", plan_session("cpu"))
        names = [i.name for i in session.get_inputs()]
        feed = dict(zip(names, [t.numpy() for t in (*args, *kwargs.values())]))
        unf = time_calls(lambda: session.run(None, feed), runs, warmup)
        result["ort_unfused_ms"] = round(unf["median_ms"], 2)
        result["ort_unfused_spread_ms"] = [round(unf["min_ms"], 2), round(unf["max_ms"], 2)]
        result["unfused_ops"] = {k: v for k, v in op_counts(prepared.export_folder / "model.onnx").items()
                                 if k in FUSED_OPS}
        del session
    if openvino is not None:
        result["ep"] = requested
        _time_openvino(result, memory, openvino, inputs, ref, runs=runs, warmup=warmup, progress=progress)
    return result


def _time_openvino(result: dict, memory, openvino: dict, inputs: dict, ref: torch.Tensor, *, runs: int, warmup: int,
                   progress) -> None:
    """The OpenVINO artefact in each asked precision, in the runtime interpreter's child, against PyTorch
    eager (``ref``) and the faster WebUI path; adds ``openvino`` and the side-by-side ``table``."""
    from ..unet import OrtUnet, input_dtypes

    report = progress or (lambda fraction, message: None)
    artefact = openvino["prepared"].artefact
    m = artefact.manifest
    # the graph's inputs as OrtUnet feeds them (its own method, on the manifest's names and dtypes)
    shape = SimpleNamespace(device="cpu", input_names=m["input_names"], input_dtypes=input_dtypes(m))
    feeds = {n: t.numpy() for n, t in OrtUnet.feeds(shape, inputs["x"], inputs["timesteps"], inputs["context"],
                                                     inputs.get("y")).items()}
    entries = {}
    for precision in openvino["precisions"]:
        name = f"ORT OpenVINO {precision}"
        memory.phase(f"openvino-{precision}")
        report(0.95, f"{name}, timed in its own process")
        timing, outputs = time_in_runtime(openvino["python"], artefact.model_path,
                                          openvino_plan(precision, result["threads"]), feeds, runs=runs,
                                          warmup=warmup, label=f"the {name} run")
        entry = child_entry(timing, precision)
        entry["rel_err"] = rel_err(torch.from_numpy(outputs[0]), ref)
        entry["speedup"] = round(result["torch_ms"] / entry["median_ms"], 3)
        entry["speedup_over_cpu_recipe"] = round(result["ort_ms"] / entry["median_ms"], 3)
        entries[name] = entry
    result.update(openvino=entries, openvino_artefact=artefact.id, openvino_method=CHILD_METHOD,
                  runtime={"python": openvino["python"], **openvino["runtime"]})
    rows = [{"config": n, **p, "speedup": result["torch_ms"] / p["median_ms"], "error": f"rel_err {p['rel_err']:.1e}"}
            for n, p in result["pytorch"].items()]
    rows.append({"config": "ORT cpu recipe", "median_ms": result["ort_ms"], "spread_ms": result["ort_spread_ms"],
                 "speedup": result["speedup"], "error": f"rel_err {result['rel_err']:.1e}"})
    if "ort_unfused_ms" in result:
        rows.append({"config": "ORT unfused", "median_ms": result["ort_unfused_ms"], "error": "–",
                     "spread_ms": result["ort_unfused_spread_ms"], "speedup": result["torch_ms"] / result["ort_unfused_ms"]})
    rows += [{"config": n, **e, "error": f"rel_err {e['rel_err']:.1e}"} for n, e in entries.items()]
    result["table"] = side_by_side_table(rows, result["baseline"], "vs PyTorch eager")


# -- the blog's (batch, steps) matrix ------------------------------------------------------------------


def matrix_rows(config: str, batch: int, steps_list, timing: dict, extra: dict) -> list[dict]:
    """UNet-only figures for each step count: per-image time and images/s from the per-call timing."""
    rows = []
    for steps in steps_list:
        per_image = steps * timing["median_ms"] / batch
        rows.append({
            "config": config, "batch": batch, "steps": steps,
            "call_ms": round(timing["median_ms"], 2),
            "call_spread_ms": [round(timing["min_ms"], 2), round(timing["max_ms"], 2)],
            "per_image_ms": round(per_image, 2),
            "images_per_s": round(1000.0 / per_image, 4),
            "spread_images_per_s": [round(1000.0 * batch / (steps * timing["max_ms"]), 4),
                                    round(1000.0 * batch / (steps * timing["min_ms"]), 4)],
            **extra,
        })
    return rows


def run_matrix(arch: str, ep: str = "cpu", *, batches=(1, 4), steps=(1, 4), height: int = 512, width: int = 512,
               seq: int = 77, runs: int = 5, warmup: int = 1, root=None, seed: int = 0, with_compile: bool = False,
               out_dir=None, toolchain: Toolchain = Toolchain(), progress=None) -> dict:
    """Time the WebUI's PyTorch paths and ldm eager (and torch.compile), ORT unfused and ORT with the
    provider's recipe per batch, and derive per-image time and images/s for each step count (UNet calls
    only, CFG-free: B rows). Gains are shown against the faster WebUI path (``meta["baseline"]``)."""
    from .report import write_report
    from ..sessions import create_session, plan_session
    from ..unet import OrtUnet

    report = progress or (lambda fraction, message: None)
    registry = Registry(root)
    model = build_unet(arch, seed=seed)
    checkpoint = {"hash": state_dict_digest(model), "name": f"{arch} (random weights, seed {seed})"}
    prepared = prepare(model, registry, checkpoint, ep, toolchain=toolchain, progress=progress)
    lh, lw = height // 8, width // 8
    rows, notes = [], {}

    def feed_for(batch):
        return example_inputs(model, batch, lh, lw, seq, seed=seed)

    compiled = None
    if with_compile:
        compiled = torch.compile(model)
    session = None
    if prepared.export_folder is not None:
        session = create_session(prepared.export_folder / "model.onnx", plan_session("cpu"))
    ort_unet = OrtUnet(prepared.artefact)
    label = f"ORT {ep} recipe"
    with torch.no_grad():
        for batch in batches:
            inputs = feed_for(batch)
            report(0.3, f"batch {batch}: reference and first calls")
            reference = model(**inputs)
            fns, extras = {}, {}
            for name, forwards in baselines_for(model).items():
                fns[name] = run_as(model, forwards, lambda inputs=inputs: model(**inputs))
                extras[name] = {"rel_err": rel_err(fns[name](), reference)}
            if compiled is not None:
                try:
                    report(0.4, f"torch.compile, batch {batch} (compiling first)")
                    start = time.perf_counter()
                    out = compiled(**inputs)
                    extras["torch.compile"] = {"rel_err": rel_err(out, reference),
                                               "compile_s": round(time.perf_counter() - start, 1)}
                    fns["torch.compile"] = lambda inputs=inputs: compiled(**inputs)
                except Exception as exc:  # report why, keep the other columns
                    notes["torch.compile"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    compiled = None
            if session is not None:
                names = [i.name for i in session.get_inputs()]
                feed = dict(zip(names, [t.numpy() for t in inputs.values()]))
                out = torch.from_numpy(session.run(None, feed)[0])
                fns["ORT unfused"] = lambda feed=feed: session.run(None, feed)
                extras["ORT unfused"] = {"rel_err": rel_err(out, reference)}
            args = (inputs["x"], inputs["timesteps"], inputs["context"])
            kwargs = {"y": inputs["y"]} if "y" in inputs else {}
            out = ort_unet(*args, **kwargs)
            fns[label] = lambda args=args, kwargs=kwargs: ort_unet(*args, **kwargs)
            extras[label] = {"rel_err": rel_err(out, reference)}
            report(0.5, f"batch {batch}: {', '.join(fns)}, interleaved")
            timings = time_interleaved(fns, runs, warmup)
            for config in fns:
                rows += matrix_rows(config, batch, steps, timings[config], extras[config])
    del ort_unet, session, compiled
    gc.collect()
    per_image = {}  # the baseline: the WebUI path with the least UNet time over the whole grid
    for r in rows:
        per_image[r["config"]] = per_image.get(r["config"], 0.0) + r["per_image_ms"]
    baseline = fastest_baseline({c: ms for c, ms in per_image.items() if c.startswith("PyTorch")})
    meta = {"baseline": baseline,"arch": arch, "ep": ep, "height": height, "width": width, "sequence": seq, "runs": runs,
            "warmup": warmup, "threads": torch.get_num_threads(), "artefact": prepared.artefact.id,
            "fused_ops": {k: v for k, v in prepared.artefact.manifest["fused_ops"].items() if k in FUSED_OPS},
            "peak_rss_mb": round(peak_rss_mb(), 1), "notes": notes,
            "method": "UNet calls only, CFG-free (B rows per call); per-image time = steps x call time / batch; "
                      f"median of {runs} calls after {warmup} warm-up, spread = min..max; the configurations "
                      "are timed interleaved, one call each per round in a rotating order"}
    result = {"meta": meta, "rows": rows}
    if out_dir is not None:
        title = f"{arch} UNet, {height}x{width}, {ep} ({torch.get_num_threads()} threads): images/s"
        result["files"] = write_report(rows, out_dir, f"unet-matrix-{arch}-{ep}", title, meta, baseline=baseline)
    return result
