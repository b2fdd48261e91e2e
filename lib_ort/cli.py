"""``python -m lib_ort``: export, optimize, list, delete and bench, without the WebUI."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import OrtTurboError
from .providers import KEYS as PROVIDER_KEYS, PROVIDERS

DEFAULT_ROOT_ENV = "ORT_TURBO_HOME"
#: what --ep takes: a provider's key, with the label the WebUI shows for it
EP_HELP = "execution provider: " + ", ".join(f"{p.key} ({p.label})" for p in PROVIDERS)


def default_root() -> Path:
    return Path(os.environ.get(DEFAULT_ROOT_ENV) or Path(__file__).resolve().parent.parent / "artefacts")


def _console_progress(fraction: float, message: str, _last={"phase": "", "at": 0.0}) -> None:
    """Print a progress line when the phase changes, and at most every 15 s within one."""
    import time

    phase = message.split("(")[0].strip()
    now = time.monotonic()
    if phase != _last["phase"] or now - _last["at"] >= 15:
        print(f"[{fraction * 100:5.1f} %] {message}", file=sys.stderr, flush=True)
        _last.update(phase=phase, at=now)


def _load_model(args):
    if args.arch:
        from .bench.architectures import build_unet

        return build_unet(args.arch, seed=args.seed)
    from .checkpoint import load_unet_from_checkpoint

    return load_unet_from_checkpoint(args.checkpoint)


def _model_and_checkpoint(args):
    from .describe import state_dict_digest

    if args.arch:
        model = _load_model(args)
        return model, {"hash": state_dict_digest(model), "name": f"{args.arch} (random weights, seed {args.seed})"}
    from .checkpoint import file_sha256

    print(f"hashing {args.checkpoint} ...", file=sys.stderr)
    sha256 = file_sha256(args.checkpoint)
    # the WebUI's checkpoint title form ("name.safetensors [hash10]"), so both name an export alike
    checkpoint = {"hash": sha256, "name": f"{Path(args.checkpoint).name} [{sha256[:10]}]"}
    return _load_model(args), checkpoint


def _toolchain(args):
    from .optimize import Toolchain

    return Toolchain(python=args.python) if args.python else Toolchain()


def cmd_export(args) -> dict:
    from .pipeline import ensure_export
    from .registry import Registry

    model, checkpoint = _model_and_checkpoint(args)
    folder, cached = ensure_export(model, Registry(args.root), checkpoint, opset=args.opset,
                                   progress=_console_progress)
    return {"export": str(folder), "cached": cached, "checkpoint": checkpoint}


def cmd_optimize(args) -> dict:
    from .memory import release_memory
    from .pipeline import ensure_export, export_needed, prepare, record_weight_map
    from .registry import Registry

    registry = Registry(args.root)
    model, checkpoint = _model_and_checkpoint(args)
    if export_needed(registry, checkpoint, args.ep, opset=args.opset, force=args.force):
        ensure_export(model, registry, checkpoint, opset=args.opset, progress=_console_progress)
    # the optimization child gets the memory the model held: this process keeps nothing of it
    del model
    release_memory()
    prepared = prepare(None, registry, checkpoint, args.ep, toolchain=_toolchain(args),
                       opset=args.opset, force=args.force, progress=_console_progress)
    if not prepared.artefact_cached:
        # where each weight lives, for Lora networks on the ONNX UNet: the model is loaded again only now
        # that the child is gone, so the optimization's memory stays the child's alone
        record_weight_map(_load_model(args), prepared.artefact)
    m = prepared.artefact.manifest
    return {"artefact": prepared.artefact.id, "folder": str(prepared.artefact.folder), "cached": prepared.artefact_cached,
            "ep": m["ep"], "precision": m["precision"], "family": m["family"], "fused_ops": m["fused_ops"]}


def cmd_list(args) -> list:
    from .registry import Registry

    rows = []
    for row in Registry(args.root).list():
        m = row.manifest or {}
        rows.append({"id": row.id, "checkpoint": m.get("checkpoint", {}).get("name"), "ep": m.get("ep"),
                     "precision": m.get("precision"), "family": m.get("family"),
                     "size_mb": round(sum((m.get("files") or {}).values()) / 2**20, 1),
                     "created": m.get("created"), "valid": row.valid, "problem": row.problem})
    return rows


def cmd_delete(args) -> dict:
    from .registry import Registry

    Registry(args.root).delete(args.id)
    return {"deleted": args.id}


def cmd_bench(args) -> dict:
    from .bench.unet import run_bench, run_matrix

    automatic = None
    if args.ep == "automatic":
        from .bench.runtime import automatic_provider
        from .providers import label

        automatic = automatic_provider(args.runtime_python)
        args.ep = automatic["ep"]
        bf16 = "with" if automatic["native_bf16"] else "without"
        print(f"Automatic on this machine: {label(args.ep)} (this install offers "
              f"{', '.join(label(k) for k in automatic['offered'])}; the CPU is {bf16} native bf16): the ORT row is "
              "what the WebUI would run", file=sys.stderr)

    if args.matrix and args.profile:
        raise ValueError("--matrix and --profile are separate runs; pick one")
    if args.ep == "openvino" and (args.matrix or args.profile):
        raise ValueError("--ep openvino times one call (bench without --matrix/--profile)")
    if args.profile:
        from .bench.profile import run_profile

        result = run_profile(args.arch, args.ep, batch=args.batch, height=args.height, width=args.width, seq=args.seq,
                             runs=args.runs, warmup=args.warmup, root=args.root, seed=args.seed,
                             toolchain=_toolchain(args), out_dir=args.out, progress=_console_progress)
        print(Path(result["files"][1]).read_text(), file=sys.stderr)
        return result
    if args.matrix:
        result = run_matrix(args.arch, args.ep, batches=args.batches, steps=args.steps, height=args.height or 512,
                            width=args.width or 512, seq=args.seq, runs=args.runs, warmup=args.warmup, root=args.root,
                            seed=args.seed, with_compile=args.compile, out_dir=args.out, toolchain=_toolchain(args),
                            progress=_console_progress)
        if "files" in result:
            print(result["files"]["table"], file=sys.stderr)
        return result

    result = run_bench(args.arch, args.ep, batch=args.batch, height=args.height, width=args.width, seq=args.seq,
                       runs=args.runs, warmup=args.warmup, root=args.root, unfused=args.unfused, seed=args.seed,
                       interleave=args.interleave, toolchain=_toolchain(args), runtime_python_path=args.runtime_python,
                       openvino_precision=args.openvino_precision, progress=_console_progress)
    if automatic is not None:
        result["automatic"] = automatic
    _print_table(result)
    return result


def _print_table(result: dict) -> None:
    """The side-by-side table of a run with a provider timed in its own process (--ep openvino)."""
    if "table" in result:
        print(f"{result['table']}\n\n{result['openvino_method']}", file=sys.stderr)


def cmd_bench_vae(args) -> dict:
    from .bench.vae import run_vae_bench

    result = run_vae_bench(args.vae, args.ep, batch=args.batch, height=args.height, width=args.width, runs=args.runs,
                           warmup=args.warmup, root=args.root, seed=args.seed, toolchain=_toolchain(args),
                           profile=args.profile, encode=args.encode, runtime_python_path=args.runtime_python,
                           openvino_precision=args.openvino_precision, progress=_console_progress)
    _print_table(result)
    return result


def cmd_webui_bench(args) -> dict:
    from .bench.webui import run_webui_bench

    result = run_webui_bench(args.url, batches=args.batches, steps=args.steps, width=args.width, height=args.height,
                             seed=args.seed, runs=args.runs, warmup=args.warmup, attention=args.attention,
                             providers=args.providers, out_dir=args.out,
                             progress=_console_progress)
    print(result["files"]["table"], file=sys.stderr)
    return result


def build_parser() -> argparse.ArgumentParser:
    from .bench.architectures import ARCHITECTURES
    from .bench.vae_architectures import VAES
    from .bench.webui import ATTENTION

    parser = argparse.ArgumentParser(prog="python -m lib_ort", description=__doc__)
    parser.add_argument("--root", type=Path, default=None,
                        help=f"the registry: artefacts and the raw exports they are made from (default: ${DEFAULT_ROOT_ENV} or ./artefacts)")
    sub = parser.add_subparsers(dest="command", required=True)

    def runtime_args(p):
        from .bench.runtime import OPENVINO_PRECISIONS, RUNTIME_PYTHON_ENV

        p.add_argument("--runtime-python", default=None,
                       help="with --ep openvino: an interpreter with onnxruntime-openvino and numpy (its own venv: it "
                            f"cannot sit beside this onnxruntime), which times OpenVINO in a child process "
                            f"(default: ${RUNTIME_PYTHON_ENV})")
        p.add_argument("--openvino-precision", choices=OPENVINO_PRECISIONS, default=None,
                       help="with --ep openvino: OpenVINO's inference precision (auto: bf16 where the CPU has native "
                            "bf16, AMX or AVX512_BF16); default both where the CPU has native bf16, else fp32")

    def model_args(p, required=True):
        src = p.add_mutually_exclusive_group(required=required)
        src.add_argument("--arch", choices=list(ARCHITECTURES), help="built-in architecture, random weights")
        src.add_argument("--checkpoint", type=Path, help="an SD1/SD2 WebUI checkpoint (.safetensors)")
        p.add_argument("--seed", type=int, default=0, help="seed of the random weights (--arch)")
        p.add_argument("--opset", type=int, default=17)

    p = sub.add_parser("export", help="export a UNet to fp32 ONNX (cached by checkpoint hash)")
    model_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("optimize", help="export if needed, then optimize it with Olive into an artefact for one provider")
    model_args(p)
    p.add_argument("--ep", choices=PROVIDER_KEYS, required=True, help=EP_HELP)
    p.add_argument("--python", help="interpreter of the Olive toolchain (default: this one)")
    p.add_argument("--force", action="store_true", help="optimize again even if a valid artefact exists")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("list", help="list artefacts, with why an invalid one cannot be used")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("delete", help="delete an artefact by id")
    p.add_argument("id")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("bench", help="time one UNet call, the WebUI's PyTorch paths (SDPA, InvokeAI, ldm eager) vs ONNX Runtime")
    p.add_argument("--arch", choices=list(ARCHITECTURES), default="sd-turbo")
    p.add_argument("--ep", choices=[*PROVIDER_KEYS, "automatic"], default="cpu",
                   help=EP_HELP + "; automatic: the one the WebUI's Automatic would pick on this machine")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--height", type=int, default=None, help="image height in px (default: the arch's)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seq", type=int, default=77)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unfused", action="store_true", help="also time the unoptimized export on ORT CPU")
    p.add_argument("--interleave", action="store_true",
                   help="time the PyTorch paths and ORT interleaved (holds the model and the session at once; "
                        "default: PyTorch first, the model dropped before the optimization, least memory)")
    p.add_argument("--python", help="interpreter of the Olive toolchain (default: this one)")
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output too)")
    p.add_argument("--matrix", action="store_true",
                   help="the blog's (batch, steps) grid: the PyTorch paths, unfused and recipe (and --compile), images/s, "
                        "with a markdown table and a PNG chart in --out")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    p.add_argument("--compile", action="store_true", help="with --matrix: also time torch.compile")
    p.add_argument("--profile", action="store_true",
                   help="where one call's time goes: per-category time and GFLOP/s for the PyTorch paths, unfused and recipe, "
                        "against this machine's sgemm rate (JSON + markdown in --out)")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="with --matrix/--profile: report folder")
    runtime_args(p)
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("bench-vae", help="time one VAE decode: PyTorch (eager = InvokeAI, SDPA), raw ONNX export, provider recipe")
    p.add_argument("--vae", choices=list(VAES), default="sd-ldm", help="built-in VAE, random weights")
    p.add_argument("--ep", choices=["cpu", "openvino"], default="cpu",
                   help="cpu; openvino: the CPU recipe, then OpenVINO's timed in --runtime-python's process")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--height", type=int, default=512, help="image height in px")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--python", help="interpreter of the Olive toolchain (default: this one)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--profile", action="store_true",
                   help="also profile the recipe's decoder: GFLOP, time per category, floor at the sgemm rate")
    p.add_argument("--encode", action="store_true", help="also time the encoder (img2img, hires fix)")
    runtime_args(p)
    p.set_defaults(func=cmd_bench_vae)
    p = sub.add_parser("webui-bench", help="time txt2img on a running WebUI (--api): stock, CFG-free, ORT Turbo")
    p.add_argument("--url", default="http://127.0.0.1:7860")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--attention", nargs="+", default=list(ATTENTION),
                   help="cross-attention optimizations (their titles in the WebUI's settings) to time the PyTorch "
                        "rows under; gains are over the faster stock row")
    p.add_argument("--providers", nargs="+", default=None,
                   help="execution providers (their labels in Settings -> ORT Turbo, e.g. CPU \"OpenVINO (CPU)\") to "
                        "time the ORT Turbo row under, one row each; default: the WebUI's own setting")
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.set_defaults(func=cmd_webui_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.root = args.root or default_root()
    try:
        result = args.func(args)
    except (OrtTurboError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=None if getattr(args, "json", False) else 2, default=str))
    return 0
