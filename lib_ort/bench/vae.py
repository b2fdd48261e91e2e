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
from .runtime import (CHILD_METHOD, check_runtime, child_entry, openvino_plan, openvino_precisions,
                      runtime_python, side_by_side_table, time_in_runtime)
from .timing import peak_rss_mb, time_interleaved
from .vae_architectures import build_vae


def to_pixels(image: torch.Tensor) -> torch.Tensor:
    """What the WebUI saves: [-1, 1] -> 0..255 integers."""
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round()


def pixel_diff(pixels: torch.Tensor, reference: torch.Tensor) -> dict:
    """How far an image is from the reference, in 0-255 steps: the largest and the mean difference."""
    diff = (pixels - reference).abs()
    return {"max_pixel_diff": float(diff.max()), "mean_pixel_diff": round(float(diff.mean()), 4)}


def _time_openvino(openvino: dict, z: torch.Tensor, reference: torch.Tensor, configs: dict, baseline: str, *,
                   runs: int, warmup: int, threads: int, report) -> dict:
    """The OpenVINO artefact's decoder in each asked precision, in the runtime interpreter's child, against
    ldm's own decode (``reference``, pixels) and the faster PyTorch path (``baseline`` in ``configs``)."""
    artefact = openvino["artefact"]
    spec = artefact.manifest["parts"]["decoder"]
    entries = {}
    for precision in openvino["precisions"]:
        name = f"ORT OpenVINO {precision}"
        report(0.8, f"{name} decoder, timed in its own process")
        timing, outputs = time_in_runtime(openvino["python"], artefact.folder / spec["model_file"],
                                          openvino_plan(precision, threads), {spec["input_name"]: z.numpy()},
                                          runs=runs, warmup=warmup, label=f"the {name} decoder run")
        entry = child_entry(timing, precision)
        entry.update(pixel_diff(to_pixels(torch.from_numpy(outputs[0])), reference))
        entry["speedup"] = round(configs[baseline]["median_ms"] / entry["median_ms"], 2)
        entries[name] = entry
    diff = lambda c: f"max {c['max_pixel_diff']:.0f}, mean {c['mean_pixel_diff']:.2f}"  # noqa: E731
    rows = [{"config": n, **c, "error": diff(c)} for n, c in {**configs, **entries}.items()]
    return {"openvino": entries, "openvino_artefact": artefact.id, "openvino_method": CHILD_METHOD,
            "runtime": {"python": openvino["python"], **openvino["runtime"]},
            "table": side_by_side_table(rows, baseline, "pixel diff (0-255) vs PyTorch eager")}


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
                  profile: bool = False, encode: bool = False, runtime_python_path: str | None = None,
                  openvino_precision: str | None = None, progress=None) -> dict:
    """``profile`` adds one decode of the recipe's graph under ORT's profiler: the decoder's GFLOP, time per
    category, and the floor at this machine's sgemm rate (see ``profile.py``). ``encode`` also times the
    encoder (img2img, hires fix) in PyTorch and in the recipe, on the same images, with the relative error
    of the posterior's moments.

    ``ep="openvino"`` times the CPU recipe as above, then the OpenVINO VAE artefact's decoder in each
    precision of ``openvino_precision`` in a child of ``runtime_python_path`` (checked first), after the
    rest (``runtime.py``): ``openvino`` has each one's timing, pixel differences, session load, first call
    and the child's peak memory; ``table`` shows every decoder side by side."""
    from ..parts.vae import EncoderGraph, export_vae
    from ..pipeline import prepare_vae
    from ..sessions import create_session, plan_session
    from ..vae import OrtVae

    report = progress or (lambda fraction, message: None)
    if height % 8 or width % 8:
        raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
    openvino = None
    if ep == "openvino":
        python = runtime_python(runtime_python_path)
        openvino = {"python": python, "precisions": openvino_precisions(openvino_precision),
                    "runtime": check_runtime(python, ep)}
    requested, ep = ep, "cpu" if ep == "openvino" else ep  # OpenVINO: the CPU recipe here, OpenVINO's after
    model = build_vae(vae_name, seed=seed)
    digest = state_dict_digest(model)
    name = f"{vae_name} (random weights, seed {seed})"
    record = {"hash": digest, "name": name}
    artefact = prepare_vae(model, Registry(root), record, record, ep, "fp32", toolchain=toolchain, progress=progress)
    if openvino is not None:
        openvino["artefact"] = prepare_vae(model, Registry(root), record, record, requested, "fp32",
                                           toolchain=toolchain, progress=progress)
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
    configs = {name: {**_timing(timings[name]), **pixel_diff(pixels[name], reference)} for name in decoders}
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
    if openvino is not None:
        model = vae = encoders = torch_encoder = None  # noqa: F841 (the child gets their memory)
        gc.collect()
        extra.update(_time_openvino(openvino, z, reference, configs, baseline, runs=runs, warmup=warmup,
                                    threads=torch.get_num_threads(), report=report))
    return {**extra, "vae": vae_name, "ep": requested, "batch": batch, "height": height, "width": width, "runs": runs,
            "warmup": warmup, "threads": torch.get_num_threads(), "artefact": artefact.id,
            "baseline": baseline, "decode": configs,
            "peak_rss_mb": round(peak_rss_mb(), 1)}
