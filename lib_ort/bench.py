"""Time one UNet call: PyTorch eager against ONNX Runtime, on the same inputs and weights.

The model is a built-in architecture with random weights (fixed seed), so the numbers need no
download. Export and optimization are cached by the weights' content hash. Each timing is the
median of ``runs`` calls after ``warmup`` calls; the spread (min..max) is reported beside it.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time

import torch

from .architectures import ARCHITECTURES, build_unet, example_inputs
from .describe import describe_unet, state_dict_digest
from .graph import op_counts
from .optimize import Toolchain
from .pipeline import prepare
from .registry import Registry

#: ops that show a recipe worked (the rest of the graph's op counts are left out of the report)
FUSED_OPS = ("MultiHeadAttention", "Attention", "GroupNorm", "SkipGroupNorm", "NhwcConv", "BiasSplitGelu",
             "BiasAdd", "LayerNormalization", "SkipLayerNormalization", "Gelu", "FastGelu", "BiasGelu")


def _peak_rss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def time_calls(fn, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples),
            "samples_ms": [round(s, 2) for s in samples]}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|."""
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))


def run_bench(arch: str, ep: str = "cpu", *, batch: int = 1, height: int | None = None, width: int | None = None,
              seq: int = 77, runs: int = 5, warmup: int = 1, root=None, unfused: bool = False, seed: int = 0,
              toolchain: Toolchain = Toolchain(), progress=None) -> dict:
    from .unet import OrtUnet

    spec = ARCHITECTURES[arch]
    latent_h = (height // 8) if height else spec.latent_size
    latent_w = (width // 8) if width else spec.latent_size
    registry = Registry(root)
    model = build_unet(arch, seed=seed)
    description = describe_unet(model)
    checkpoint = {"hash": state_dict_digest(model), "name": f"{arch} (random weights, seed {seed})"}
    prepared = prepare(model, registry, checkpoint, ep, toolchain=toolchain, progress=progress)
    inputs = example_inputs(model, batch, latent_h, latent_w, seq, seed=seed)

    with torch.no_grad():
        ref = model(**inputs)
        torch_t = time_calls(lambda: model(**inputs), runs, warmup)
    args = (inputs["x"], inputs["timesteps"], inputs["context"])
    kwargs = {"y": inputs["y"]} if "y" in inputs else {}

    ort_unet = OrtUnet(prepared.artefact)
    out = ort_unet(*args, **kwargs)
    ort_t = time_calls(lambda: ort_unet(*args, **kwargs), runs, warmup)
    result = {
        "arch": arch, "family": description.family.value, "ep": ep, "batch": batch,
        "height": latent_h * 8, "width": latent_w * 8, "sequence": seq,
        "torch_ms": round(torch_t["median_ms"], 2), "ort_ms": round(ort_t["median_ms"], 2),
        "speedup": round(torch_t["median_ms"] / ort_t["median_ms"], 3),
        "rel_err": rel_err(out, ref),
        "fused_ops": {k: v for k, v in prepared.artefact.manifest["fused_ops"].items() if k in FUSED_OPS},
        "export_s": prepared.export_s, "optimize_s": prepared.optimize_s,
        "artefact_cached": prepared.artefact_cached, "artefact": prepared.artefact.id,
        "torch_spread_ms": [round(torch_t["min_ms"], 2), round(torch_t["max_ms"], 2)],
        "ort_spread_ms": [round(ort_t["min_ms"], 2), round(ort_t["max_ms"], 2)],
        "runs": runs, "warmup": warmup, "threads": torch.get_num_threads(),
    }
    del ort_unet
    gc.collect()
    if unfused and prepared.export_folder is not None:
        from .sessions import create_session, plan_session

        session = create_session(prepared.export_folder / "model.onnx", plan_session("cpu"))
        names = [i.name for i in session.get_inputs()]
        feed = dict(zip(names, [t.numpy() for t in (*args, *kwargs.values())]))
        unf = time_calls(lambda: session.run(None, feed), runs, warmup)
        result["ort_unfused_ms"] = round(unf["median_ms"], 2)
        result["ort_unfused_spread_ms"] = [round(unf["min_ms"], 2), round(unf["max_ms"], 2)]
        result["unfused_ops"] = {k: v for k, v in op_counts(prepared.export_folder / "model.onnx").items()
                                 if k in FUSED_OPS}
        del session
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    result["optimize_peak_rss_mb"] = round(_peak_rss_mb(resource.RUSAGE_CHILDREN), 1) or None
    return result
