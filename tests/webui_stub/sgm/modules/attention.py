"""Stand-in of ``sgm.modules.attention``: the transformer of sgm's SDXL UNet.

What differs from ldm's (sdkit) transformer and matters to an export:
* ``SpatialTransformer`` takes a context width per transformer block (the refiner's config gives a
  list) and, with ``use_linear``, projects in and out with ``nn.Linear`` after flattening to tokens;
* ``BasicTransformerBlock`` chooses its attention class by ``attn_mode`` (``softmax`` ->
  ``CrossAttention``, ``softmax-xformers`` -> ``MemoryEfficientCrossAttention``; without xformers, as
  the WebUI forces it, the latter falls back to the former) and calls it with the keyword arguments
  ``context``, ``additional_tokens`` and ``n_times_crossframe_attn_in_self``: whatever forward the
  WebUI (or an export) installs on these classes must accept them.
The feed-forward and the group norm are the same as ldm's and are taken from sdkit's ``ldm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from ldm.modules.attention import FeedForward, Normalize, zero_module
from torch import nn

#: ``sgm.modules.attention.XFORMERS_IS_AVAILABLE``: the WebUI sets it to False (sd_models_xl.py)
XFORMERS_IS_AVAILABLE = False


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, width = t.shape
    return t.reshape(batch, tokens, heads, width // heads).permute(0, 2, 1, 3)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = t.shape
    return t.permute(0, 2, 1, 3).reshape(batch, tokens, heads * head_dim)


class _Projections(nn.Module):
    """The layers both sgm attention classes have: bias-free q/k/v and ``to_out`` = Linear + Dropout."""

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def _qkv(self, x, context, additional_tokens):
        if additional_tokens is not None:
            x = torch.cat([additional_tokens, x], dim=1)
        context = x if context is None else context
        return self.to_q(x), self.to_k(context), self.to_v(context)

    @staticmethod
    def _crossframe(t, n, copies):
        """Cross-frame attention (video): the keys/values of every ``n``-th row, each repeated ``copies`` times."""
        return t[::n].repeat_interleave(copies, dim=0) if n else t

    def _finish(self, out, additional_tokens):
        if additional_tokens is not None:
            out = out[:, additional_tokens.shape[1]:]
        return self.to_out(out)


class CrossAttention(_Projections):
    """sgm's default attention: scaled dot-product attention over [batch, heads, tokens, head_dim]."""

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0, backend=None):
        super().__init__(query_dim, context_dim, heads, dim_head, dropout)
        self.scale = dim_head ** -0.5
        self.backend = backend

    def forward(self, x, context=None, mask=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        q, k, v = self._qkv(x, context, additional_tokens)
        n = n_times_crossframe_attn_in_self
        copies = x.shape[0] // n if n else 0
        k, v = self._crossframe(k, n, copies), self._crossframe(v, n, copies)
        out = F.scaled_dot_product_attention(*(_split_heads(t, self.heads) for t in (q, k, v)), attn_mask=mask)
        return self._finish(_merge_heads(out), additional_tokens)


class MemoryEfficientCrossAttention(_Projections):
    """sgm's xformers attention (same weights as ``CrossAttention``; heads folded into the batch).

    The real forward calls ``xformers.ops.memory_efficient_attention``; here the same softmax attention is
    computed with torch, so the class can be built and run without xformers."""

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0, **kwargs):
        super().__init__(query_dim, context_dim, heads, dim_head, dropout)
        self.dim_head = dim_head
        self.attention_op = None

    def forward(self, x, context=None, mask=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        if mask is not None:
            raise NotImplementedError("sgm's MemoryEfficientCrossAttention takes no mask")
        q, k, v = self._qkv(x, context, additional_tokens)
        n = n_times_crossframe_attn_in_self  # here each row is repeated n times (sgm's two classes differ)
        k, v = self._crossframe(k, n, n), self._crossframe(v, n, n)
        batch = q.shape[0]
        q, k, v = (_split_heads(t, self.heads).reshape(batch * self.heads, t.shape[1], self.dim_head) for t in (q, k, v))
        weights = torch.softmax(q @ k.transpose(1, 2) * self.dim_head ** -0.5, dim=-1)
        out = (weights @ v).reshape(batch, self.heads, -1, self.dim_head)
        return self._finish(_merge_heads(out), additional_tokens)


class BasicTransformerBlock(nn.Module):
    ATTENTION_MODES = {"softmax": CrossAttention, "softmax-xformers": MemoryEfficientCrossAttention}

    def __init__(self, dim, n_heads, d_head, dropout=0.0, context_dim=None, gated_ff=True, checkpoint=True,
                 disable_self_attn=False, attn_mode="softmax", sdp_backend=None):
        super().__init__()
        if attn_mode not in self.ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {attn_mode!r}")
        if attn_mode == "softmax-xformers" and not XFORMERS_IS_AVAILABLE:
            attn_mode = "softmax"  # what sgm does when xformers is missing (and in the WebUI, always)
        attention = self.ATTENTION_MODES[attn_mode]
        self.disable_self_attn = disable_self_attn
        self.attn1 = attention(query_dim=dim, heads=n_heads, dim_head=d_head, dropout=dropout,
                               context_dim=context_dim if disable_self_attn else None, backend=sdp_backend)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = attention(query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head,
                               dropout=dropout, backend=sdp_backend)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.checkpoint = checkpoint  # gradient checkpointing: no effect on the forward's values

    def forward(self, x, context=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        # each residual is the second operand, as in sgm: ORT's BiasAdd fusion matches Add(ff, skip) only
        self_context = context if self.disable_self_attn else None
        x = self.attn1(self.norm1(x), context=self_context, additional_tokens=additional_tokens,
                       n_times_crossframe_attn_in_self=0 if self.disable_self_attn else n_times_crossframe_attn_in_self) + x
        x = self.attn2(self.norm2(x), context=context, additional_tokens=additional_tokens) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Image features -> tokens -> ``depth`` transformer blocks -> image features, plus the input."""

    def __init__(self, in_channels, n_heads, d_head, depth=1, dropout=0.0, context_dim=None,
                 disable_self_attn=False, use_linear=False, attn_type="softmax", use_checkpoint=True,
                 sdp_backend=None):
        super().__init__()
        if context_dim is None or isinstance(context_dim, int):
            context_dims = [context_dim] * depth
        else:
            context_dims = list(context_dim)
            if len(context_dims) != depth:
                if len(set(context_dims)) != 1:
                    raise ValueError("a context width per block must have one entry per block, or all be equal")
                context_dims = [context_dims[0]] * depth
        inner = n_heads * d_head
        self.in_channels = in_channels
        self.use_linear = use_linear
        self.norm = Normalize(in_channels)
        self.proj_in = nn.Linear(in_channels, inner) if use_linear else nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, n_heads, d_head, dropout=dropout, context_dim=width,
                                  disable_self_attn=disable_self_attn, attn_mode=attn_type,
                                  checkpoint=use_checkpoint, sdp_backend=sdp_backend)
            for width in context_dims)
        self.proj_out = zero_module(nn.Linear(inner, in_channels) if use_linear else nn.Conv2d(inner, in_channels, 1))

    def forward(self, x, context=None):
        contexts = context if isinstance(context, list) else [context]
        height, width = x.shape[2:]
        h = self.norm(x)
        if not self.use_linear:
            h = self.proj_in(h)
        # einops, as sgm: its shape arithmetic is part of the traced graph that ORT's fusions walk
        h = rearrange(h, "b c h w -> b (h w) c").contiguous()
        if self.use_linear:
            h = self.proj_in(h)
        for i, block in enumerate(self.transformer_blocks):
            h = block(h, context=contexts[i if len(contexts) > 1 else 0])
        if self.use_linear:
            h = self.proj_out(h)
        h = rearrange(h, "b (h w) c -> b c h w", h=height, w=width).contiguous()
        if not self.use_linear:
            h = self.proj_out(h)
        return h + x
