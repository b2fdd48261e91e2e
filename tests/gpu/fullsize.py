"""The GPU check's full-size part (issue 16): SD-Turbo and the fp16 VAE, random weights, nothing downloaded.

    python tests/gpu/fullsize.py prepare OUT_DIR     # export + cuda recipe on this machine (minutes)
    python tests/gpu/fullsize.py grid OUT_DIR        # the blog's (batch, steps) grid at 512x512
    python tests/gpu/fullsize.py vae OUT_DIR         # fp16 VAE decode vs PyTorch, NaN guard on an overflowing VAE

Each is its own command (each well inside 10 minutes); the registry in OUT_DIR/registry carries the
artefact from ``prepare`` to ``grid``. Lines go to OUT_DIR/results.jsonl like device_check.py's, so
report.py puts them in the same report. ``--dry-run`` (CI): tiny models, the CPU provider, 64 px.

The grid times UNet calls only, CFG-free (B rows per call), with CUDA events: torch eager fp16 (the WebUI's
path: ldm's UNet in fp16), torch.compile of the same (its compile time reported, skipped if it fails), ORT
with the cuda recipe without and with CUDA graphs; images/s = 1000 * batch / (steps * call ms).
The blog's A100 figures are for reference only (another GPU, another pipeline around the UNet).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).parent))

from device_check import record, time_ms  # noqa: E402

CKPT_VAE = {"hash": "f" * 64, "name": "device-check"}


def _setup(a):
    """``a.arch`` (run.py's SDXL-Turbo step) replaces SD-Turbo (tiny-sd2 in a dry run); ``a.batches`` limits
    the grid's batch sizes (SDXL-Turbo: batch 1 only, to fit its time box)."""
    cuda = torch.cuda.is_available() and not a.dry_run
    arch = getattr(a, "arch", None) or ("tiny-sd2" if a.dry_run else "sd-turbo")
    return {"arch": arch, "ep": "cpu" if a.dry_run else "cuda",
            "px": (64 if a.dry_run else 1024 if "sdxl" in arch else 512),
            "device": torch.device("cuda" if cuda else "cpu"), "cuda": cuda,
            "vae": "tiny-ldm" if a.dry_run else "sd-ldm", "batches": tuple(getattr(a, "batches", None) or (1, 4))}


def _model_and_checkpoint(arch: str):
    from lib_ort.bench.architectures import build_unet
    from lib_ort.describe import state_dict_digest

    model = build_unet(arch, seed=0)
    return model, {"hash": state_dict_digest(model), "name": f"{arch} (random weights)"}


def cmd_prepare(a, s, out: Path) -> dict:
    from lib_ort.pipeline import prepare
    from lib_ort.registry import Registry

    model, checkpoint = _model_and_checkpoint(s["arch"])
    start = time.perf_counter()
    prepared = prepare(model, Registry(out / "registry"), checkpoint, s["ep"], keep_export=False)
    m = prepared.artefact.manifest
    return {"artefact": prepared.artefact.id, "export_s": prepared.export_s, "optimize_s": prepared.optimize_s,
            "total_s": round(time.perf_counter() - start, 1), "fused_ops": m["fused_ops"], "io_types": m["io_types"],
            "placement": m.get("placement")}


def cmd_grid(a, s, out: Path) -> dict:
    from lib_ort.bench.architectures import example_inputs
    from lib_ort.registry import Registry
    from lib_ort.unet import OrtUnet

    model, checkpoint = _model_and_checkpoint(s["arch"])
    registry = Registry(out / "registry")
    folder = registry.find(checkpoint["hash"], s["ep"])
    if folder is None:
        raise RuntimeError("no artefact: run `fullsize.py prepare` first")
    artefact = registry.load(folder, checkpoint["hash"])
    dtype = torch.float16 if s["cuda"] else torch.float32
    model = model.to(s["device"], dtype)
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=s["cuda"])  # the WebUI's fp16 path
    ort = {f"ORT {s['ep']} recipe": OrtUnet(artefact)}
    if s["cuda"]:
        ort[f"ORT {s['ep']} recipe + graphs"] = OrtUnet(artefact, cuda_graph=True)
    compiled, notes = None, {}
    if not a.no_compile:
        compiled = torch.compile(model)
    rows = []
    lat = s["px"] // 8
    for batch in s["batches"]:
        inputs = {k: v.to(s["device"], dtype if v.is_floating_point() else v.dtype)
                  for k, v in example_inputs(model, batch, lat, lat, 77, seed=batch).items()}
        inputs["timesteps"] = inputs["timesteps"].float()
        with torch.no_grad(), autocast:
            reference = model(**inputs).float()
            fns = {"torch eager": lambda: model(**inputs)}
            if compiled is not None:
                try:
                    start = time.perf_counter()
                    compiled(**inputs)
                    notes[f"torch.compile compile_s batch {batch}"] = round(time.perf_counter() - start, 1)
                    fns["torch.compile"] = lambda: compiled(**inputs)
                except Exception as exc:  # report why, keep the other columns
                    notes["torch.compile"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    compiled = None
            for label, unet in ort.items():
                out_ = unet(inputs["x"], inputs["timesteps"], inputs["context"], y=inputs.get("y")).float()
                notes[f"{label} rel_err batch {batch}"] = float((out_ - reference).abs().max() / reference.abs().max())
                fns[label] = lambda unet=unet: unet(inputs["x"], inputs["timesteps"], inputs["context"], y=inputs.get("y"))
            for label, fn in fns.items():
                ms = time_ms(s["cuda"], fn, 5, warmup=2)
                for steps in (1, 4):
                    rows.append({"config": label, "batch": batch, "steps": steps, "call_ms": round(ms, 2),
                                 "images_per_s": round(1000.0 * batch / (steps * ms), 3)})
    gpu = torch.cuda.get_device_name(0) if s["cuda"] else "cpu (dry run)"
    return {"gpu": gpu, "px": s["px"], "rows": rows, "notes": notes}


def cmd_vae(a, s, out: Path) -> dict:
    from lib_ort.registry import Registry
    from lib_ort.vae import GuardedDecoder, OrtVae, forget_fp16_overflows
    from lib_ort.bench.vae_architectures import build_vae
    from lib_ort.pipeline import prepare_vae

    registry = Registry(out / "registry")
    fp16_recipe = None
    if not s["cuda"]:
        from lib_ort.recipes import cpu_fp16_vae_recipe

        fp16_recipe = cpu_fp16_vae_recipe()
    result = {}
    for label, scale in (("vae", 1.0), ("overflowing vae", 1e6)):
        model = build_vae(s["vae"], seed=3)
        with torch.no_grad():
            model.decoder.conv_out.weight *= scale
            model.decoder.conv_out.bias *= scale
        record_ = {"hash": ("e" if scale == 1 else "9") * 64, "name": label}
        fp16 = OrtVae(prepare_vae(model, registry, CKPT_VAE, record_, s["ep"], "fp16", recipe=fp16_recipe))
        lat = s["px"] // 8 if s["cuda"] else 8
        z = torch.randn(1, 4, lat, lat, device=s["device"])
        with torch.no_grad():
            ref = model.to(s["device"]).decode(z).float()
        forget_fp16_overflows()
        # no fp32 artefact (one Olive run less): an overflow is decoded again by PyTorch in fp32
        guard = GuardedDecoder(fp16, vae_name=label, torch_decode=lambda z: model.decode(z.float()))
        out_ = guard.decode(z.to(torch.float16 if s["cuda"] else torch.float32)).float()
        result[label] = {"source": guard.last_source, "finite": bool(torch.isfinite(out_).all()),
                         "rel_err": float((out_ - ref).abs().max() / ref.abs().max())}
    result["ok"] = result["vae"]["source"] == "ort" and result["overflowing vae"]["source"] == "torch-fp32" and all(
        r["finite"] for r in (result["vae"], result["overflowing vae"]))
    return result


COMMANDS = {"prepare": cmd_prepare, "grid": cmd_grid, "vae": cmd_vae}


def main(argv=None) -> int:
    args = argparse.ArgumentParser()
    args.add_argument("command", choices=tuple(COMMANDS))
    args.add_argument("out")
    args.add_argument("--dry-run", action="store_true")
    args.add_argument("--no-compile", action="store_true")
    a = args.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    s = _setup(a)
    start = time.perf_counter()
    try:
        line = {"step": f"full-{a.command}", "name": f"fullsize {a.command}", "status": "ok", **COMMANDS[a.command](a, s, out)}
        if line.get("ok") is False:
            line["status"] = "failed"
    except Exception as exc:
        import traceback

        line = {"step": f"full-{a.command}", "name": f"fullsize {a.command}", "status": "error",
                "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=4)}
    line["seconds"] = round(time.perf_counter() - start, 2)
    record(out, line)
    return 0 if line["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
