"""Build what ``device_check.py`` needs: a UNet with real widths, its artefact, and fp32 references.

    python tests/gpu/make_device_data.py OUT_DIR [--ep cuda|cpu] [--size real|tiny] [--families sd1,inpaint,sdxl]

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

from lib_ort.bench.architectures import example_inputs  # noqa: E402
from lib_ort.describe import state_dict_digest  # noqa: E402
from lib_ort.pipeline import prepare  # noqa: E402
from lib_ort.registry import Registry  # noqa: E402

REAL_WIDTHS = dict(image_size=16, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[1, 2],
                   num_res_blocks=1, channel_mult=(1, 2), num_head_channels=64, use_linear_in_transformer=True,
                   use_spatial_transformer=True, transformer_depth=1, context_dim=1024, legacy=False,
                   use_checkpoint=False)

#: the other families at real widths (``--families``): SD1 (8 heads, conv projections, head size 40 at 320
#: channels, context 768), SD2 inpainting (9 input channels), SDXL-shaped (diffusers, head size 64, a
#: projection class embedding of 2816 as the WebUI's ``y``); the tiny size uses the suite's tiny models
FAMILY_WIDTHS = {
    "sd1": dict(REAL_WIDTHS, num_head_channels=-1, num_heads=8, use_linear_in_transformer=False, context_dim=768),
    "inpaint": dict(REAL_WIDTHS, in_channels=9),
}
SDXL_WIDTHS = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(320, 640), layers_per_block=1,
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 1),
                   attention_head_dim=(5, 10), cross_attention_dim=2048, projection_class_embeddings_input_dim=2816,
                   use_linear_projection=True, class_embed_type="projection", norm_num_groups=32)
TINY_FAMILIES = {"sd1": "tiny-sd1", "inpaint": "tiny-sd2-inpaint", "sdxl": "tiny-sdxl"}

#: (batch, latent h, latent w, tokens) per case; "a" and "b" are the graph check's two shapes
CASES = {"real": {"a": (1, 16, 16, 77), "b": (2, 16, 24, 154)}, "tiny": {"a": (1, 8, 8, 77), "b": (2, 8, 12, 154)}}
TIMESTEPS = (999.0, 999.25, 500.5)


def build_model(size: str, family: str = "sd2"):
    if size == "tiny":
        from lib_ort.bench.architectures import build_unet

        return build_unet(TINY_FAMILIES.get(family, "tiny-sd2"), seed=0)
    torch.manual_seed(0)
    if family == "sdxl":
        from diffusers import UNet2DConditionModel

        from lib_ort.bench.architectures import DiffusersAsWebuiUnet

        model = DiffusersAsWebuiUnet(UNet2DConditionModel(**SDXL_WIDTHS))
    else:
        from ldm.modules.diffusionmodules.openaimodel import UNetModel

        model = UNetModel(**FAMILY_WIDTHS.get(family, REAL_WIDTHS))
    with torch.no_grad():  # output layers are zero-initialised: give them values so parity means something
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn_like(p) * 0.02)
    return model.eval().requires_grad_(False)


def main(argv=None) -> dict:
    args = argparse.ArgumentParser()
    args.add_argument("out")
    args.add_argument("--ep", default="cuda")
    args.add_argument("--size", choices=("real", "tiny"), default="real")
    args.add_argument("--families", default="", help="comma-separated: sd1, inpaint, sdxl (parity per family)")
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
    families = {}
    for family in filter(None, a.families.split(",")):
        fmodel = build_model(a.size, family)
        fcheck = {"hash": state_dict_digest(fmodel), "name": f"device-check-{a.size}-{family}"}
        fart = prepare(fmodel, Registry(out / "registry"), fcheck, a.ep, keep_export=False).artefact
        b, h, w, seq = CASES[a.size]["a"]
        inputs = example_inputs(fmodel, b, h, w, seq, seed=11)
        inputs["timesteps"] = torch.full((b,), 999.25)
        with torch.no_grad():
            families[family] = {"artefact": fart.id, "inputs": inputs, "output": fmodel(**inputs),
                                "fused_ops": fart.manifest["fused_ops"]}
    torch.save({"artefact": artefact.id, "size": a.size, "cases": cases, "families": families}, out / "reference.pt")
    torch.save(model.state_dict(), out / "model_state.pt")  # torch fp16 timing on the GPU uses the same weights
    info = {"artefact": artefact.id, "ep": a.ep, "size": a.size, "fused_ops": artefact.manifest["fused_ops"],
            "families": {k: v["artefact"] for k, v in families.items()},
            "io_types": artefact.manifest["io_types"], "build_s": round(time.perf_counter() - start, 1)}
    print(info, flush=True)
    return info


if __name__ == "__main__":
    main()
