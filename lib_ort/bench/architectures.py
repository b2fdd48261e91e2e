"""Built-in UNet architectures with random weights, for tests and benchmarks (no download).

SD1/SD2 use the WebUI's own ldm ``UNetModel`` (PyPI ``stable-diffusion-sdkit`` ships ``ldm``), so
what we export and time is the class the WebUI runs. SDXL has no ldm class, so SDXL shapes use
diffusers' ``UNet2DConditionModel`` with a projection class embedding, wrapped to the WebUI's call
signature: that is the same computation as sgm's ``label_emb`` on ``y``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


class DiffusersAsWebuiUnet(nn.Module):
    """A diffusers UNet called like the WebUI's: ``forward(x, timesteps, context, y=None)``."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        return self.unet(x, timesteps, encoder_hidden_states=context, class_labels=y, return_dict=False)[0]


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    kind: str  # "ldm" or "diffusers"
    config: dict
    #: the latent size and text length a benchmark uses by default (64 = 512 px)
    latent_size: int = 64
    full_size: bool = False


def _ldm(name, *, context_dim, linear, in_channels=4, tiny=True):
    if tiny:
        config = dict(image_size=8, model_channels=32, attention_resolutions=[1, 2], num_res_blocks=1,
                      channel_mult=(1, 2))
    else:
        config = dict(image_size=32, model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2,
                      channel_mult=(1, 2, 4, 4))
    config.update(in_channels=in_channels, out_channels=4, use_spatial_transformer=True, transformer_depth=1,
                  context_dim=context_dim, legacy=False, use_checkpoint=False)
    if linear:  # SD2: fixed head width, linear projections in the transformers
        config.update(num_head_channels=8 if tiny else 64, use_linear_in_transformer=True)
    else:  # SD1: fixed number of heads, 1x1 convolutions as projections
        config.update(num_heads=4 if tiny else 8)
    return Architecture(name, "ldm", config, latent_size=8 if tiny else 64, full_size=not tiny)


def _sdxl(name, *, tiny=True):
    if tiny:
        config = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                      transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), cross_attention_dim=64,
                      projection_class_embeddings_input_dim=96)
    else:
        config = dict(sample_size=64, block_out_channels=(320, 640, 1280), layers_per_block=2,
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                      transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                      cross_attention_dim=2048, projection_class_embeddings_input_dim=2816)
    config.update(in_channels=4, out_channels=4, use_linear_projection=True, class_embed_type="projection",
                  norm_num_groups=32)
    return Architecture(name, "diffusers", config, latent_size=8 if tiny else 64, full_size=not tiny)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        _ldm("tiny-sd1", context_dim=64, linear=False),
        _ldm("tiny-sd2", context_dim=96, linear=True),
        _ldm("tiny-sd2-inpaint", context_dim=96, linear=True, in_channels=9),
        _sdxl("tiny-sdxl"),
        _ldm("sd15", context_dim=768, linear=False, tiny=False),
        _ldm("sd-turbo", context_dim=1024, linear=True, tiny=False),
        _sdxl("sdxl-turbo", tiny=False),
    )
}


def _randomize_zero_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """ldm and diffusers zero-initialise output layers, which would make every output 0 and every
    parity check pass trivially: give those layers small random values instead."""
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def build_unet(name: str, seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """Build a built-in architecture with random weights (fixed ``seed``), fp32, eval mode.

    ``device="meta"`` builds the structure without memory (for reading its description).
    """
    try:
        arch = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}") from None
    torch.manual_seed(seed)
    with torch.device(device):
        if arch.kind == "ldm":
            from ldm.modules.diffusionmodules.openaimodel import UNetModel

            model: nn.Module = UNetModel(**arch.config)
        else:
            from diffusers import UNet2DConditionModel

            model = DiffusersAsWebuiUnet(UNet2DConditionModel(**arch.config))
    if torch.device(device).type != "meta":
        _randomize_zero_parameters(model, torch.Generator().manual_seed(seed + 1))
    model.eval().requires_grad_(False)
    return model


def example_inputs(model_or_io, batch: int = 1, latent_h: int = 8, latent_w: int = 8, seq: int = 77,
                   seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random WebUI-style inputs (``x``, fractional per-row ``timesteps``, ``context`` and ``y``)."""
    from ..describe import IOSpec, describe_unet

    io = model_or_io if isinstance(model_or_io, IOSpec) else describe_unet(model_or_io).io
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "x": torch.randn(batch, io.in_channels, latent_h, latent_w, generator=g).to(dtype),
        "timesteps": (torch.rand(batch, generator=g) * 999.0).to(dtype),
        "context": torch.randn(batch, seq, io.context_dim, generator=g).to(dtype),
    }
    if io.adm_dim:
        inputs["y"] = torch.randn(batch, io.adm_dim, generator=g).to(dtype)
    return inputs
