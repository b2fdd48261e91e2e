"""The PyTorch paths a WebUI user can run, as the baselines of every speed-up the benchmarks report.

A WebUI on CPU does not run ldm's own attention: it installs a "cross attention optimization" on the
attention classes (``modules/sd_hijack_optimizations.py``). With the setting on Automatic it picks the
available one with the highest priority, and on a machine without CUDA or MPS that is **InvokeAI**
(priority 1000): a split einsum attention that works in slices of at most 32 MB of attention scores and
leaves the VAE's ``AttnBlock`` as ldm wrote it. **SDP** (PyTorch's scaled_dot_product_attention, priority
70) is one dropdown choice away and replaces both the UNet's and the VAE's attention. Which of the two
is faster depends on the machine, so a benchmark times both and reports its speed-up against the faster
one, naming it; ldm's plain eager forward is kept as a further column.

``invokeai_cross_attention_forward`` is our implementation of the algorithm the WebUI runs on CPU (the
same slicing rule and arithmetic, without the WebUI's hypernetwork and upcast hooks, which are off by
default and change nothing in fp32); the UNet's SDPA forward is the export's own (``lib_ort.attention``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

import torch.nn.functional as F

from ..attention import is_ldm_style_cross_attention, sdpa_cross_attention_forward, swapped_forwards

#: the InvokeAI split's budget for one slice of attention scores on CPU ("smaller slices are faster due to
#: L2/L3 caches"), in MiB
SLICE_MB = 32


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T) v over [batch*heads, tokens, dim] (k is already scaled)."""
    return torch.bmm(torch.bmm(q, k.transpose(1, 2)).softmax(dim=-1), v)


def sliced_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slice_mb: int = SLICE_MB) -> torch.Tensor:
    """The InvokeAI rule: all at once when the [batch*heads, q_tokens, k_tokens] scores fit in ``slice_mb``;
    else split them into a power of two of parts, along batch*heads while there are enough of them,
    otherwise along the query tokens."""
    rows, q_tokens, k_tokens = q.shape[0], q.shape[1], k.shape[1]
    size_mb = rows * q_tokens * k_tokens * q.element_size() // 2**20
    if size_mb <= slice_mb:
        return _attend(q, k, v)
    parts = 1 << ((size_mb - 1) // slice_mb).bit_length()
    out = torch.empty(rows, q_tokens, v.shape[2], dtype=q.dtype, device=q.device)
    if parts <= rows:
        step = rows // parts
        for start in range(0, rows, step):
            out[start:start + step] = _attend(q[start:start + step], k[start:start + step], v[start:start + step])
    else:
        step = max(q_tokens // parts, 1)
        for start in range(0, q_tokens, step):
            out[:, start:start + step] = _attend(q[:, start:start + step], k, v)
    return out


def invokeai_cross_attention_forward(self, x, context=None, mask=None, **kwargs):
    """ldm's CrossAttention the way the WebUI's InvokeAI optimization computes it (``mask`` is ignored
    there too)."""
    heads = self.heads
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context) * self.scale, self.to_v(context)
    batch, _, inner = q.shape
    dim = inner // heads
    q, k, v = (t.reshape(batch, -1, heads, dim).transpose(1, 2).reshape(batch * heads, -1, dim) for t in (q, k, v))
    out = sliced_attention(q, k, v)
    return self.to_out(out.reshape(batch, heads, -1, dim).transpose(1, 2).reshape(batch, -1, inner))


def is_ldm_style_attn_block(module: nn.Module) -> bool:
    """ldm's and sgm's VAE ``AttnBlock``: a norm and q/k/v/proj_out 1x1 convolutions."""
    return all(isinstance(getattr(module, name, None), nn.Conv2d) for name in ("q", "k", "v", "proj_out")) \
        and hasattr(module, "norm")


def sdpa_attn_block_forward(self, x):
    """The VAE's self-attention (one head over all pixels, 1x1-conv projections) through SDPA, as the
    WebUI's SDP optimization runs it."""
    h = self.norm(x)
    q, k, v = self.q(h), self.k(h), self.v(h)
    b, c, height, width = q.shape
    q, k, v = (t.reshape(b, 1, c, height * width).transpose(2, 3) for t in (q, k, v))  # [b, 1, hw, c]
    out = F.scaled_dot_product_attention(q, k, v)
    return x + self.proj_out(out.transpose(2, 3).reshape(b, c, height, width))


#: name -> the forwards it installs; a class no entry names keeps the model's own forward.
#: InvokeAI leaves the VAE's AttnBlock alone (the WebUI's InvokeAI ``apply`` sets CrossAttention only).
BASELINES: dict[str, dict] = {
    "PyTorch eager": {},
    "PyTorch SDPA": {is_ldm_style_cross_attention: sdpa_cross_attention_forward,
                     is_ldm_style_attn_block: sdpa_attn_block_forward},
    "PyTorch InvokeAI": {is_ldm_style_cross_attention: invokeai_cross_attention_forward},
}
#: the WebUI's two CPU paths, one of which is the baseline; eager is shown beside them
WEBUI_PATHS = ("PyTorch SDPA", "PyTorch InvokeAI")


def _effective(model: nn.Module, forwards: dict) -> frozenset:
    """(class, forward) pairs an entry would actually install in ``model``."""
    pairs = set()
    for module in model.modules():
        for accepts, forward in forwards.items():
            if accepts(module):
                pairs.add((type(module), forward))
                break
    return frozenset(pairs)


def baselines_for(model: nn.Module) -> dict[str, dict]:
    """The baselines that differ on ``model``, the names of equal ones joined ("PyTorch eager = InvokeAI":
    on the VAE, InvokeAI installs nothing; on a diffusers model, none of them does). Timing the same
    computation twice would only add noise."""
    merged: dict[frozenset, list[str]] = {}
    for name, forwards in BASELINES.items():
        merged.setdefault(_effective(model, forwards), []).append(name)
    result = {}
    for names in merged.values():
        label = names[0] + "".join(" = " + n.removeprefix("PyTorch ") for n in names[1:])
        result[label] = BASELINES[names[0]]
    return result


def baseline_context(model: nn.Module, forwards: dict):
    """A context in which ``model`` runs one baseline's attention."""
    return swapped_forwards(model, forwards) if forwards else contextlib.nullcontext(0)


def run_as(model: nn.Module, forwards: dict, fn):
    """A callable that runs ``fn()`` with ``model`` on the baseline's attention (swapped per call, so
    baselines can be timed interleaved; the swap is a few attribute writes)."""
    def call():
        with baseline_context(model, forwards):
            return fn()
    return call


def is_webui_path(label: str) -> bool:
    """Whether a label (as ``baselines_for`` makes them) names one of the WebUI's CPU paths."""
    names = {n.removeprefix("PyTorch ") for n in label.split(" = ")}
    return bool(names & {n.removeprefix("PyTorch ") for n in WEBUI_PATHS})


def fastest_baseline(medians: dict[str, float]) -> str:
    """The baseline a speed-up is reported against: the faster of the WebUI's CPU paths (SDPA or
    InvokeAI) among ``medians`` (label -> ms; labels as ``baselines_for`` makes them)."""
    candidates = {label: ms for label, ms in medians.items() if is_webui_path(label)}
    if not candidates:
        raise ValueError(f"none of {list(medians)} is a WebUI attention path ({', '.join(WEBUI_PATHS)})")
    return min(candidates, key=candidates.get)
