"""Stand-in of ``sgm.modules.diffusionmodules.openaimodel``: the UNet of the WebUI's SDXL checkpoints.

The same constructor (for the options SDXL's configs use), state_dict keys and shapes and forward as sgm's
``UNetModel`` at 45c443b. What sets it apart from ldm's UNet, which sdkit ships:
* ``num_classes="sequential"``: ``label_emb`` = Sequential(Sequential(Linear(adm_in_channels, 4C), SiLU,
  Linear(4C, 4C))) on ``y`` (2816 wide for the base model, 2560 for the refiner), added to the time embedding;
* ``transformer_depth`` per level (SDXL base: [1, 2, 10], the first level has no attention) and
  ``transformer_depth_middle`` (default: the last level's depth); ``context_dim`` may be a list, one per block;
* its own ``SpatialTransformer`` / attention classes (``sgm.modules.attention``).
The residual, down- and upsampling blocks and the timestep embedding are the same as ldm's and come from
sdkit's ``ldm``.
"""

from __future__ import annotations

import torch
from ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, TimestepBlock, Upsample
from ldm.modules.diffusionmodules.util import normalization, timestep_embedding, zero_module
from torch import nn

from ..attention import SpatialTransformer


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Runs its layers in order, giving the time embedding to residual blocks and the context to transformers."""

    def forward(self, x, emb, context=None, **kwargs):
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


def _per_level(value, levels: int, what: str) -> list:
    values = [value] * levels if isinstance(value, int) else list(value)
    if len(values) != levels:
        raise ValueError(f"{what} needs one value per level ({levels}), got {values}")
    return values


class UNetModel(nn.Module):
    def __init__(self, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions, dropout=0,
                 channel_mult=(1, 2, 4, 8), conv_resample=True, dims=2, num_classes=None, use_checkpoint=False,
                 num_heads=-1, num_head_channels=-1, use_spatial_transformer=False, transformer_depth=1,
                 context_dim=None, legacy=True, use_linear_in_transformer=False,
                 spatial_transformer_attn_type="softmax", adm_in_channels=None, transformer_depth_middle=None):
        super().__init__()
        if dims != 2 or not use_spatial_transformer or legacy:
            raise NotImplementedError("the stand-in builds SDXL's layout only: 2-D, spatial transformers, legacy=False")
        if num_classes not in (None, "sequential"):
            raise NotImplementedError(f"num_classes={num_classes!r}: SDXL uses 'sequential' (a vector y)")
        if (num_heads == -1) == (num_head_channels == -1):
            raise ValueError("set exactly one of num_heads and num_head_channels")
        levels = len(channel_mult)
        depths = _per_level(transformer_depth, levels, "transformer_depth")
        middle_depth = depths[-1] if transformer_depth_middle is None else transformer_depth_middle
        res_blocks = _per_level(num_res_blocks, levels, "num_res_blocks")
        self.in_channels, self.model_channels, self.out_channels = in_channels, model_channels, out_channels
        self.num_classes = num_classes
        self.num_res_blocks = res_blocks

        emb_width = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_width), nn.SiLU(), nn.Linear(emb_width, emb_width))
        if num_classes == "sequential":
            if adm_in_channels is None:
                raise ValueError("num_classes='sequential' needs adm_in_channels (the width of y)")
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(adm_in_channels, emb_width), nn.SiLU(), nn.Linear(emb_width, emb_width)))

        def heads(channels):
            if num_head_channels == -1:
                return num_heads, channels // num_heads
            return channels // num_head_channels, num_head_channels

        def res(ch_in, ch_out=None):
            return ResBlock(ch_in, emb_width, dropout, out_channels=ch_out, dims=2, use_checkpoint=use_checkpoint)

        def transformer(channels, depth):
            n, d = heads(channels)
            return SpatialTransformer(channels, n, d, depth=depth, context_dim=context_dim,
                                      use_linear=use_linear_in_transformer, attn_type=spatial_transformer_attn_type,
                                      use_checkpoint=use_checkpoint)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_widths = [model_channels]
        ch, scale = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(res_blocks[level]):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if scale in attention_resolutions:
                    layers.append(transformer(ch, depths[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_widths.append(ch)
            if level < levels - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, conv_resample, dims=2, out_channels=ch)))
                skip_widths.append(ch)
                scale *= 2

        self.middle_block = TimestepEmbedSequential(res(ch), transformer(ch, middle_depth), res(ch))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            width = channel_mult[level] * model_channels
            for i in range(res_blocks[level] + 1):
                layers = [res(ch + skip_widths.pop(), width)]
                ch = width
                if scale in attention_resolutions:
                    layers.append(transformer(ch, depths[level]))
                if level and i == res_blocks[level]:
                    layers.append(Upsample(ch, conv_resample, dims=2, out_channels=ch))
                    scale //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1)))

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        if (y is None) != (self.num_classes is None):
            raise AssertionError("must specify y if and only if the model is class-conditional")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
        if y is not None:
            if y.shape[0] != x.shape[0]:
                raise AssertionError(f"y has {y.shape[0]} rows for {x.shape[0]} latents")
            emb = emb + self.label_emb(y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h.type(x.dtype))
