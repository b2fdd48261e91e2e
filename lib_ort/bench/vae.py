"""Time one VAE decode at a WebUI size: the WebUI's PyTorch paths (ldm's AttnBlock, which InvokeAI keeps,
and SDPA: ``baselines.py``), the raw fp32 ONNX export and the provider's VAE recipe on ONNX Runtime, on the
same latents and weights, with the image difference in 0-255 pixels. Speed-ups are over the faster
PyTorch path, named in ``baseline``.

At 1-4 steps the decode is a large part of a generation on CPU, so this is the VAE half of the
end-to-end target. Each timing is the median of ``runs`` decodes after ``warmup``; the spread is
min..max. The configurations are timed interleaved (one decode of each per round), because this kind of
VM drifts between blocks of runs. The raw export is timed too because a recipe must earn its place against it.
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import torch

from ..describe import state_dict_digest
from ..export import MODEL_FILE
from ..optimize import Toolchain
from ..registry import Registry
from .baselines import baselines_for, fastest_baseline, run_as
from .timing import peak_rss_mb, time_interleaved
from .vae_architectures import build_vae


def to_pixels(image: torch.Tensor) -> torch.Tensor:
    """What the WebUI saves: [-1, 1] -> 0..255 integers."""
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round()


def _timing(t: dict) -> dict:
    return {"median_ms": round(t["median_ms"], 1), "spread_ms": [round(t["min_ms"], 1), round(t["max_ms"], 1)]}


def add_speedups(configs: dict, baseline: str | None = None) -> float:
    """Each configuration's speed-up over ``baseline`` (default: the first); returns the baseline's median."""
    base = configs[baseline or next(iter(configs))]["median_ms"]
    for c in configs.values():
        c["speedup"] = round(base / c["median_ms"], 2)
    return base


def run_vae_bench(vae_name: str = "sd-ldm", ep: str = "cpu", *, batch: int = 1, height: int = 512, width: int = 512,
                  runs: int = 3, warmup: int = 1, root=None, seed: int = 0, toolchain: Toolchain = Toolchain(),
                  profile: bool = False, encode: bool = False, progress=None) -> dict:
    """``profile`` adds one decode of the recipe's graph under ORT's profiler: the decoder's GFLOP, time per
    category, and the floor at this machine's sgemm rate (see ``profile.py``). ``encode`` also times the
    encoder (img2img, hires fix) in PyTorch and in the recipe, on the same images, with the relative error
    of the posterior's moments."""
    from ..parts.vae import EncoderGraph, export_vae
    from ..pipeline import prepare_vae
    from ..sessions import create_session, plan_session
    from ..vae import OrtVae

    report = progress or (lambda fraction, message: None)
    if height % 8 or width % 8:
        raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
    model = build_vae(vae_name, seed=seed)
    digest = state_dict_digest(model)
    name = f"{vae_name} (random weights, seed {seed})"
    artefact = prepare_vae(model, Registry(root), {"hash": digest, "name": name}, {"hash": digest, "name": name},
                           ep, "fp32", toolchain=toolchain, progress=progress)
    z = torch.randn(batch, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(seed))
    recipe = f"ORT {ep} recipe"
    tmp = tempfile.TemporaryDirectory(prefix="ort-turbo-vae-bench-")  # removed once its session is gone
    report(0.3, "raw export")
    export_vae(model, Path(tmp.name) / "export", parts=("decoder",))
    session = create_session(Path(tmp.name) / "export" / "decoder" / MODEL_FILE,
                             plan_session("cpu", cpu_memory_arena=False))  # as OrtVae runs it
    feed = {session.get_inputs()[0].name: z.numpy()}
    vae = OrtVae(artefact)
    paths = baselines_for(model)
    decoders = {name: run_as(model, forwards, lambda: model.decode(z)) for name, forwards in paths.items()}
    decoders.update({"ORT raw export": lambda: session.run(None, feed)[0], recipe: lambda: vae.decode(z)})
    with torch.no_grad():
        pixels = {name: to_pixels(torch.as_tensor(decode())) for name, decode in decoders.items()}
        report(0.4, f"decoding, the {len(decoders)} interleaved")
        timings = time_interleaved(decoders, runs, warmup)
    reference = pixels[next(iter(paths))]  # ldm's own forward
    configs = {name: {**_timing(timings[name]), "max_pixel_diff": float((pixels[name] - reference).abs().max())}
               for name in decoders}
    del decoders, session
    gc.collect()
    tmp.cleanup()
    baseline = fastest_baseline({name: configs[name]["median_ms"] for name in paths})
    base = add_speedups(configs, baseline)
    eager_ms = configs[next(iter(paths))]["median_ms"]
    extra = {}
    if encode:
        report(0.85, f"encoder: PyTorch and ORT {ep} VAE recipe")
        x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed + 1)) * 2 - 1
        torch_encoder = EncoderGraph(model)
        encoders = {name: run_as(model, forwards, lambda: torch_encoder(x)) for name, forwards in paths.items()}
        encoders[recipe] = lambda: vae.encode_moments(x)
        with torch.no_grad():
            moments = {name: encode() for name, encode in encoders.items()}
            timings = time_interleaved(encoders, runs, warmup)
        torch_moments = moments[next(iter(paths))]
        encoded = {name: {**_timing(timings[name]),
                          "rel_err": float((m - torch_moments).abs().max() / torch_moments.abs().max())}
                   for name, m in moments.items()}
        encode_baseline = fastest_baseline({name: encoded[name]["median_ms"] for name in paths})
        add_speedups(encoded, encode_baseline)
        extra["encode_baseline"] = encode_baseline
        extra["encode"] = encoded
    if profile:
        from .profile import profile_ort, sgemm_rates

        report(0.9, "the recipe's decoder under ORT's profiler")
        spec = artefact.manifest["parts"]["decoder"]
        del vae
        gc.collect()
        breakdown = profile_ort(artefact.folder / spec["model_file"], [z.numpy()], runs=1, warmup=0,
                                config=recipe, cpu_memory_arena=False).to_dict()  # as OrtVae runs
        rates = sgemm_rates(torch.get_num_threads())
        gflop = sum(breakdown["gflop"].values())
        floor_ms = gflop / max(rates.values()) * 1000.0
        extra["profile"] = {**breakdown, "sgemm_gflops_by_library": {k: round(v, 1) for k, v in rates.items()},
                            "floor_ms": round(floor_ms, 3), "max_speedup_over_eager": round(eager_ms / floor_ms, 2),
                            "max_speedup_over_baseline": round(base / floor_ms, 2),
                            "recipe_share_of_floor": round(floor_ms / configs[recipe]["median_ms"], 2)}
    return {**extra, "vae": vae_name, "ep": ep, "batch": batch, "height": height, "width": width, "runs": runs,
            "warmup": warmup, "threads": torch.get_num_threads(), "artefact": artefact.id,
            "baseline": baseline, "decode": configs,
            "peak_rss_mb": round(peak_rss_mb(), 1)}
