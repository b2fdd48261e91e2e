"""What switching Lora networks costs on an ONNX UNet artefact: ``python -m lib_ort.bench.lora``.

Stands in for the WebUI's Lora extension with a rank-``r`` LoRA delta on every Linear of the transformer
blocks (attention q/k/v/out, feed-forward, proj in/out: what kohya-style LoRAs train) and times what
``lib_ort.webui.networks`` does: derive the weight map (first use only), write the changed parameters
into copies of their initializers, rebuild the session; then a second set, and back to none. One UNet
call is timed after each, and once on the PyTorch UNet with the same LoRA for the parity figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

LORA_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
               "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")


def rss_gb() -> dict:
    """Resident memory (Linux): ``anon`` is what the process itself holds; ``file`` counts the pages of
    memory-mapped files (the artefact's weights read through the map), which the kernel can reclaim."""
    with open("/proc/self/status") as f:
        kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("RssAnon", "RssFile")}
    return {"anon": round(kb["RssAnon"] / 2**20, 2), "file": round(kb["RssFile"] / 2**20, 2)}


def lora_targets(model) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and any(name.endswith(s) for s in LORA_LAYERS)]


def lora_delta(model, names, rank: int, weight: float, seed: int) -> dict:
    """name.weight -> W + weight * up @ down (alpha = rank), as the extension would leave it."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        w = modules[name].weight.detach()
        up = torch.randn(w.shape[0], rank, generator=g) * 0.02
        down = torch.randn(rank, w.shape[1], generator=g) * 0.02
        out[f"{name}.weight"] = (w + weight * (up @ down)).numpy()
    return out


def main(argv=None) -> dict:
    from ..onnx_weights import Weights
    from ..registry import Registry
    from ..unet import OrtUnet
    from ..weight_map import WeightMap
    from .architectures import build_unet

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", required=True, help="registry holding the artefact")
    ap.add_argument("--artefact", required=True, help="artefact id")
    ap.add_argument("--arch", default="sd-turbo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--other-seed", type=int, default=None,
                    help="also serve another checkpoint of the family (these random weights) from the same artefact")
    args = ap.parse_args(argv)

    report: dict = {"cpu": torch.get_num_threads()}
    t = time.perf_counter()
    model = build_unet(args.arch, seed=args.seed).eval()
    report["torch_build_s"] = round(time.perf_counter() - t, 1)
    artefact = Registry(args.root).load(Registry(args.root).root / args.artefact)
    t = time.perf_counter()
    ort = OrtUnet(artefact)
    report["session_s"] = round(time.perf_counter() - t, 1)
    report["rss_gb_base"] = rss_gb()
    g = torch.Generator().manual_seed(1)
    lat = args.size // 8
    x = torch.randn(1, 4, lat, lat, generator=g)
    ts = torch.tensor([999.0])
    ctx = torch.randn(1, 77, artefact.manifest["io"]["context_dim"], generator=g)

    def call():
        t = time.perf_counter()
        out = ort(x, ts, ctx)
        return out, round(time.perf_counter() - t, 2)

    _, report["unet_call_s_first"] = call()
    base, report["unet_call_s"] = call()

    t = time.perf_counter()
    weights = Weights(artefact.model_path)
    params = {k: v.detach().numpy() for k, v in model.named_parameters()}
    weight_map = WeightMap.derive(params, weights)
    report["map_derive_s"] = round(time.perf_counter() - t, 1)
    report["map_mapped"] = len(weight_map.places)
    report["map_unmapped"] = dict(list(weight_map.unmapped.items())[:10])
    report["map_unmapped_count"] = len(weight_map.unmapped)
    report["rss_gb_after_map"] = rss_gb()
    del params

    targets = lora_targets(model)
    report["lora_layers"] = len(targets)
    for label, weight, seed in (("first_set", 0.8, 1), ("second_set", 0.5, 2)):
        t = time.perf_counter()
        values = lora_delta(model, targets, args.rank, weight, seed)
        delta_s = time.perf_counter() - t
        t = time.perf_counter()
        overrides = weight_map.overrides(values, weights)
        t_over = time.perf_counter() - t
        t = time.perf_counter()
        ort.replace_weights(overrides)
        t_session = time.perf_counter() - t
        out, call_s = call()
        report[label] = {"delta_s": round(delta_s, 2), "overrides_s": round(t_over, 2), "session_s": round(t_session, 1),
                         "replaced": len(overrides),
                         "replaced_gb": round(sum(a.nbytes for a in overrides.values()) / 2**30, 2),
                         "unet_call_s": call_s, "rss_gb": rss_gb(),
                         "changed_vs_base": float((out - base).abs().max())}
        del values, overrides
        if label == "first_set":  # parity with the PyTorch UNet carrying the same LoRA
            modules = dict(model.named_parameters())
            saved = {n: modules[n].detach().clone() for n in (f"{t}.weight" for t in targets)}
            with torch.no_grad():
                for n, v in lora_delta(model, targets, args.rank, weight, seed).items():
                    modules[n].copy_(torch.from_numpy(v))
                t = time.perf_counter()
                ref = model(x, ts, context=ctx)
                report["torch_call_s"] = round(time.perf_counter() - t, 2)
                for n, v in saved.items():
                    modules[n].copy_(v)
            report[label]["max_abs_diff_vs_torch"] = float((out - ref).abs().max())
            report[label]["ref_abs_max"] = float(ref.abs().max())
            del saved, ref
    t = time.perf_counter()
    ort.replace_weights({})
    report["back_to_none"] = {"session_s": round(time.perf_counter() - t, 1)}
    out, report["back_to_none"]["unet_call_s"] = call()
    report["back_to_none"]["max_abs_diff_vs_base"] = float((out - base).abs().max())
    report["back_to_none"]["rss_gb"] = rss_gb()
    if args.other_seed is not None:
        report["other_checkpoint"] = other_checkpoint(args, ort, weights, weight_map, model, (x, ts, ctx))
    report["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(json.dumps(report, indent=1))
    return report


def other_checkpoint(args, ort, weights, weight_map, model, inputs) -> dict:
    """Every mapped weight replaced by another checkpoint's (same architecture, other random weights): what
    serving a fine-tune or merge from one artefact would cost, per switch and per call."""
    from .architectures import build_unet

    names = [n for n, _ in model.named_parameters()]
    del model
    other = build_unet(args.arch, seed=args.other_seed).eval()
    params = dict(other.named_parameters())
    out = {"unmapped": len([n for n in names if n not in weight_map.places])}
    t = time.perf_counter()
    overrides = weight_map.overrides({n: params[n].detach().numpy() for n in names if n in weight_map.places}, weights)
    out["overrides_s"] = round(time.perf_counter() - t, 1)
    out["replaced_gb"] = round(sum(a.nbytes for a in overrides.values()) / 2**30, 2)
    t = time.perf_counter()
    ort.replace_weights(overrides)
    out["session_s"] = round(time.perf_counter() - t, 1)
    del overrides
    for label in ("unet_call_s_first", "unet_call_s"):
        t = time.perf_counter()
        got = ort(*inputs)
        out[label] = round(time.perf_counter() - t, 2)
    with torch.no_grad():
        ref = other(inputs[0], inputs[1], context=inputs[2])
    out["max_abs_diff_vs_torch"] = float((got - ref).abs().max())
    out["rss_gb"] = rss_gb()
    return out


if __name__ == "__main__":
    main()
