"""Stable Diffusion VAEs (``AutoencoderKL``) with random weights, for tests and benchmarks (no download).

Two implementations of the same network, because the WebUI runs one and the diffusers world the other:

* ``LdmAutoencoderKL``: what the WebUI's ``first_stage_model`` computes for SD1/SD2 (ldm's
  ``AutoencoderKL``), built from ldm's own ``Encoder``/``Decoder`` and the two 1x1 convolutions.
  ldm's ``AutoencoderKL`` class itself is a PyTorch Lightning module, and Lightning is neither in
  the WebUI-like test environment nor needed to compute anything, so it is not imported.
* diffusers' ``AutoencoderKL`` (also what SDXL-shaped VAEs are in tests).

Both expose ``encoder``, ``decoder``, ``quant_conv`` and ``post_quant_conv``, which is all the export reads.
"""

from __future__ import annotations

import torch
from torch import nn

#: ldm ``ddconfig`` of the SD1/SD2/SDXL VAE, and a tiny one with the same structure (2 levels, 1 block)
LDM_FULL = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=(1, 2, 4, 4),
                num_res_blocks=2, attn_resolutions=(), dropout=0.0)
LDM_TINY = dict(LDM_FULL, ch=32, ch_mult=(1, 2), num_res_blocks=1)

DIFFUSERS_FULL = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                      block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
DIFFUSERS_TINY = dict(DIFFUSERS_FULL, layers_per_block=1, block_out_channels=(32, 64),
                      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                      sample_size=64)


class LdmAutoencoderKL(nn.Module):
    """ldm's ``AutoencoderKL`` computation (``encode`` -> a diagonal Gaussian, ``decode``) without Lightning."""

    def __init__(self, ddconfig: dict, embed_dim: int = 4):
        super().__init__()
        from ldm.modules.diffusionmodules.model import Decoder, Encoder

        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quant_conv = nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.embed_dim = embed_dim

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    def encode(self, x):
        from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x):
        return self.decode(self.encode(x).mode())


VAES = {"tiny-ldm": ("ldm", LDM_TINY), "tiny-diffusers": ("diffusers", DIFFUSERS_TINY),
        "sd-ldm": ("ldm", LDM_FULL), "sd-diffusers": ("diffusers", DIFFUSERS_FULL)}


def build_vae(name: str, seed: int = 0) -> nn.Module:
    """A VAE of a built-in configuration with random weights (fixed ``seed``), fp32, eval mode."""
    try:
        kind, config = VAES[name]
    except KeyError:
        raise ValueError(f"unknown VAE {name!r}; choose one of: {', '.join(VAES)}") from None
    torch.manual_seed(seed)
    if kind == "ldm":
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # ldm prints one line per attention block
            model: nn.Module = LdmAutoencoderKL(config)
    else:
        from diffusers import AutoencoderKL

        model = AutoencoderKL(**config)
    return model.eval().requires_grad_(False)
