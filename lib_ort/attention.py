"""Trace the UNet's and the VAE's attention through PyTorch's SDPA while exporting.

ORT's UNet attention fusion recognises the graph that ``F.scaled_dot_product_attention`` exports
to, with q/k/v viewed as [batch, heads, tokens, head_dim]. The WebUI's ldm/sgm ``CrossAttention``
is whatever attention optimization the WebUI installed (einsum, sub-quadratic, xformers, ...):
measured on the ldm UNet with ORT 1.32, only the SDPA form fuses into MultiHeadAttention.
So for the export we install an SDPA forward on the cross-attention *classes* found in the model
and put back exactly what was there afterwards (the WebUI's own choice included), also on error.

The VAE's single-head ``AttnBlock`` is exported as ldm wrote it: measured with ORT 1.32 on one 64x64x512
block, neither its own form nor an SDPA form fuses (ORT's VAE fusion looks for diffusers' linear-projection
pattern), and the two ran alike (345 vs 361 ms, noise); see docs/benchmarks.md.

diffusers' ``Attention`` already runs SDPA (``AttnProcessor2_0``) and is left alone.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch.nn.functional as F
from torch import nn


def sdpa_cross_attention_forward(self, x, context=None, mask=None, **kwargs):
    heads = self.heads
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    batch = q.shape[0]
    head_dim = q.shape[-1] // heads
    q, k, v = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim)
    return self.to_out(out)


def is_ldm_style_cross_attention(module: nn.Module) -> bool:
    """ldm's and sgm's ``CrossAttention``: to_q/to_k/to_v linears, an int ``heads`` and ``to_out``."""
    return (
        isinstance(getattr(module, "to_q", None), nn.Linear)
        and isinstance(getattr(module, "heads", None), int)
        and hasattr(module, "to_out")
        and not hasattr(module, "processor")  # diffusers' Attention runs SDPA through its processor
    )


@contextlib.contextmanager
def swapped_forwards(model: nn.Module, forwards: dict[Callable[[nn.Module], bool], Callable]):
    """Within the block, every class in ``model`` that a predicate of ``forwards`` accepts runs that
    forward; what each class had before (its own forward, or none: inherited) comes back afterwards,
    also on error. Yields the number of classes swapped."""
    chosen = {}
    for module in model.modules():
        for accepts, forward in forwards.items():
            if accepts(module):
                chosen.setdefault(type(module), forward)
                break
    saved = {cls: cls.__dict__.get("forward") for cls in chosen}
    try:
        for cls, forward in chosen.items():
            cls.forward = forward
        yield len(chosen)
    finally:
        for cls, forward in saved.items():
            if forward is None:
                del cls.forward  # it was inherited: fall back to the base class again
            else:
                cls.forward = forward


def sdpa_attention(model: nn.Module):
    """Within the block, ldm/sgm cross-attention in ``model`` runs (and traces) as SDPA."""
    return swapped_forwards(model, {is_ldm_style_cross_attention: sdpa_cross_attention_forward})
