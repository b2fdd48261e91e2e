"""Build the ldm UNet of an SD1/SD2 WebUI checkpoint (``.safetensors``) outside the WebUI.

Inside the WebUI the loaded model is exported directly; this is for the command line. The config is
read from the weights (input channels, context width, linear or convolutional projections), and the
key is the file's sha256, the same hash the WebUI shows for the checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

PREFIX = "model.diffusion_model."


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def ldm_config_from_keys(shapes: dict[str, tuple]) -> dict:
    """The ldm ``UNetModel`` config of an SD1/SD2 UNet, from its weight shapes (prefix stripped)."""
    if "label_emb.0.0.weight" in shapes:
        raise ValueError("this is an SDXL checkpoint; export it from the WebUI's ORT Turbo tab")
    try:
        first = shapes["input_blocks.0.0.weight"]
    except KeyError:
        raise ValueError("no Stable Diffusion UNet weights (model.diffusion_model.*) in this file") from None
    in_channels, model_channels = first[1], first[0]
    context = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((s for k, s in shapes.items() if k.endswith("proj_in.weight")), None)
    if context not in (768, 1024) or model_channels != 320 or proj_in is None:
        raise ValueError(
            f"not an SD1/SD2 UNet (model channels {model_channels}, context width {context}); "
            "only SD1 (768) and SD2 (1024) checkpoints can be exported from the command line")
    config = dict(image_size=32, in_channels=in_channels, out_channels=4, model_channels=320,
                  attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=(1, 2, 4, 4),
                  use_spatial_transformer=True, transformer_depth=1, context_dim=context, legacy=False,
                  use_checkpoint=False)
    if len(proj_in) == 2:  # SD2: linear projections, 64-wide heads
        config.update(num_head_channels=64, use_linear_in_transformer=True)
    else:
        config.update(num_heads=8)
    return config


def load_unet_from_checkpoint(path: str | os.PathLike) -> torch.nn.Module:
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors import safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path.name}: only .safetensors checkpoints are read (no pickle files)")
    with safe_open(str(path), framework="pt") as f:
        keys = [k for k in f.keys() if k.startswith(PREFIX)]
        shapes = {k[len(PREFIX):]: tuple(f.get_slice(k).get_shape()) for k in keys}
        config = ldm_config_from_keys(shapes)
        model = UNetModel(**config)
        state = {k[len(PREFIX):]: f.get_tensor(k).to(torch.float32) for k in keys}
    model.load_state_dict(state, strict=True)
    del state
    return model.eval().requires_grad_(False)
