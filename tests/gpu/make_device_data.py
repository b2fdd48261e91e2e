"""Build what ``device_check.py`` needs: a UNet with real widths, its artefact, and fp32 references.

    python tests/gpu/make_device_data.py OUT_DIR [--ep cuda|cpu] [--size real|tiny]

``--size real`` (the GPU run): 320/640 channels, head size 64, one res block per level, context 1024 (an
SD 2.x block at a size a GPU check can afford). ORT's CUDA kernels reject the tiny test widths: GroupNorm
needs an even channel count per group (32 groups: 320 -> 10 ✓, the tiny 32 channels -> 1 ✗) and
BiasSplitGelu takes only 2560/5120/10240 (320 channels -> GEGLU width 2560 ✓). ``--size tiny`` (the CPU dry
run) uses the suite's tiny SD2. Runs on the CPU of whichever machine (the GPU machine has the exporter's
torch; Olive comes in the wheels of ../shared/device/README.md). Fractional timesteps (t and t + 0.25) are
in the references, so the fp32 time embedding can be checked.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lib_ort.describe import state_dict_digest  # noqa: E402
from lib_ort.pipeline import prepare  # noqa: E402
from lib_ort.registry import Registry  # noqa: E402

REAL_WIDTHS = dict(image_size=16, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[1, 2],
                   num_res_blocks=1, channel_mult=(1, 2), num_head_channels=64, use_linear_in_transformer=True,
                   use_spatial_transformer=True, transformer_depth=1, context_dim=1024, legacy=False,
                   use_checkpoint=False)

#: (batch, latent h, latent w, tokens) per case; "a" and "b" are the graph check's two shapes
CASES = {"real": {"a": (1, 16, 16, 77), "b": (2, 16, 24, 154)}, "tiny": {"a": (1, 8, 8, 77), "b": (2, 8, 12, 154)}}
TIMESTEPS = (999.0, 999.25, 500.5)


def build_model(size: str):
    if size == "tiny":
        from lib_ort.architectures import build_unet

        return build_unet("tiny-sd2", seed=0)
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(0)
    model = UNetModel(**REAL_WIDTHS)
    with torch.no_grad():  # ldm zero-initialises output layers: give them values so parity means something
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn_like(p) * 0.02)
    return model.eval().requires_grad_(False)


def main(argv=None) -> dict:
    args = argparse.ArgumentParser()
    args.add_argument("out")
    args.add_argument("--ep", default="cuda")
    args.add_argument("--size", choices=("real", "tiny"), default="real")
    a = args.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = build_model(a.size)
    checkpoint = {"hash": state_dict_digest(model), "name": f"device-check-{a.size}"}
    artefact = prepare(model, Registry(out / "registry"), checkpoint, a.ep, keep_export=False).artefact
    context_dim = REAL_WIDTHS["context_dim"] if a.size == "real" else 96
    cases = {}
    for key, (b, h, w, s) in CASES[a.size].items():
        g = torch.Generator().manual_seed(b * 100 + h)
        x = torch.randn(b, 4, h, w, generator=g)
        context = torch.randn(b, s, context_dim, generator=g)
        outputs = {}
        with torch.no_grad():
            for t in TIMESTEPS:
                outputs[t] = model(x, torch.full((b,), t), context)
        cases[key] = {"x": x, "context": context, "outputs": outputs}
    torch.save({"artefact": artefact.id, "size": a.size, "cases": cases}, out / "reference.pt")
    torch.save(model.state_dict(), out / "model_state.pt")  # torch fp16 timing on the GPU uses the same weights
    info = {"artefact": artefact.id, "ep": a.ep, "size": a.size, "fused_ops": artefact.manifest["fused_ops"],
            "io_types": artefact.manifest["io_types"], "build_s": round(time.perf_counter() - start, 1)}
    print(info, flush=True)
    return info


if __name__ == "__main__":
    main()
