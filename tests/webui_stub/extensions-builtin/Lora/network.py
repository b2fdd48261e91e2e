"""Stand-in of the Lora extension's network.py and network_*.py (v1.10.1): one class per network kind,
each computing its weight delta (``calc_updown``) from the tensors the real one reads, under the same
safetensors key names, then ``finalize_updown``: the optional ``bias`` term, the reshape to the
layer's weight, the scale (``scale``, else ``alpha / dim``) and the multiplier (te for text-encoder
layers, unet otherwise). DoRA (``dora_scale``), CP-decomposed LoRA/LoHa/LoKr (``lora_mid``, ``hada_t*``,
``lokr_t2``), ``dyn_dim`` and BOFT are not in this stand-in: the ORT side never sees how a delta was
computed, only the weights it leaves.
"""

from __future__ import annotations

import torch


class Network:
    """One loaded network file: its per-layer modules and the multipliers of the current job."""

    def __init__(self, name, filename, mtime):
        self.name = name
        self.filename = filename
        self.mtime = mtime
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules = {}


class NetworkModule:
    def __init__(self, net, sd_key, w, sd_module):
        self.network = net
        self.sd_key = sd_key
        self.sd_module = sd_module
        self.w = w
        self.dim = None
        self.bias = w.get("bias")
        self.alpha = w["alpha"].item() if "alpha" in w else None
        self.scale = w["scale"].item() if "scale" in w else None

    def multiplier(self):
        return self.network.te_multiplier if "transformer" in self.sd_key[:20] else self.network.unet_multiplier

    def calc_scale(self):
        if self.scale is not None:
            return self.scale
        if self.dim is not None and self.alpha is not None:
            return self.alpha / self.dim
        return 1.0

    def finalize_updown(self, updown, orig_weight, output_shape, ex_bias=None):
        if self.bias is not None:
            updown = updown.reshape(self.bias.shape) + self.bias.to(orig_weight.device, updown.dtype)
            updown = updown.reshape(output_shape)
        if len(output_shape) == 4:
            updown = updown.reshape(output_shape)
        if orig_weight.numel() == updown.numel():
            updown = updown.reshape(orig_weight.shape)
        if ex_bias is not None:
            ex_bias = ex_bias * self.multiplier()
        return updown * self.calc_scale() * self.multiplier(), ex_bias

    def calc_updown(self, orig_weight):
        raise NotImplementedError


def _product(up, down, shape):
    """up [out, r(, 1, 1)] x down [r, in(, kh, kw)] -> the weight's shape."""
    return (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(shape)


class Lora(NetworkModule):
    keys = ("lora_up.weight", "lora_down.weight")

    def __init__(self, *args):
        super().__init__(*args)
        self.up, self.down = self.w["lora_up.weight"], self.w["lora_down.weight"]
        self.dim = self.down.shape[0]

    def calc_updown(self, orig_weight):
        shape = [self.up.shape[0], self.down.shape[1], *self.down.shape[2:]]
        return self.finalize_updown(_product(self.up, self.down, shape).to(orig_weight), orig_weight, shape)


class LoHa(NetworkModule):
    keys = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")

    def __init__(self, *args):
        super().__init__(*args)
        self.dim = self.w["hada_w1_b"].shape[0]

    def calc_updown(self, orig_weight):
        w = self.w
        shape = [w["hada_w1_a"].shape[0], w["hada_w1_b"].shape[1], *w["hada_w1_b"].shape[2:]]
        updown = _product(w["hada_w1_a"], w["hada_w1_b"], shape) * _product(w["hada_w2_a"], w["hada_w2_b"], shape)
        return self.finalize_updown(updown.to(orig_weight), orig_weight, shape)


class LoKr(NetworkModule):
    keys = ("lokr_w1", "lokr_w2")

    def __init__(self, *args):
        super().__init__(*args)
        if "lokr_w2_b" in self.w:
            self.dim = self.w["lokr_w2_b"].shape[0]

    def _factor(self, i):
        w = self.w
        return w[f"lokr_w{i}"] if f"lokr_w{i}" in w else w[f"lokr_w{i}_a"] @ w[f"lokr_w{i}_b"]

    def calc_updown(self, orig_weight):
        w1, w2 = self._factor(1), self._factor(2)
        shape = list(orig_weight.shape) if orig_weight.ndim == 4 else [w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]]
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        updown = torch.kron(w1, w2.contiguous()).reshape(shape)
        return self.finalize_updown(updown.to(orig_weight), orig_weight, shape)


class IA3(NetworkModule):
    keys = ("weight",)

    def calc_updown(self, orig_weight):
        w = self.w["weight"].to(orig_weight)
        on_input = bool(self.w["on_input"].item())
        shape = [w.shape[0], orig_weight.shape[1]]
        if on_input:
            shape.reverse()
        else:
            w = w.reshape(-1, 1)
        return self.finalize_updown(orig_weight * w, orig_weight, shape)


class Full(NetworkModule):
    keys = ("diff",)

    def calc_updown(self, orig_weight):
        diff, diff_b = self.w["diff"], self.w.get("diff_b")
        return self.finalize_updown(diff.to(orig_weight), orig_weight, diff.shape,
                                    None if diff_b is None else diff_b.to(orig_weight))


class Norm(NetworkModule):
    keys = ("w_norm", "b_norm")

    def calc_updown(self, orig_weight):
        w, b = self.w["w_norm"], self.w.get("b_norm")
        return self.finalize_updown(w.to(orig_weight), orig_weight, w.shape, None if b is None else b.to(orig_weight))


class GLoRA(NetworkModule):
    keys = ("a1.weight", "a2.weight", "alpha", "b1.weight", "b2.weight")

    def calc_updown(self, orig_weight):
        w = self.w
        a1, b1, a2, b2 = (w[k].to(orig_weight) for k in ("a1.weight", "b1.weight", "a2.weight", "b2.weight"))
        shape = [a1.shape[0], b1.shape[1]]
        return self.finalize_updown(b2 @ b1 + (orig_weight @ a2) @ a1, orig_weight, shape)


class OFT(NetworkModule):
    """kohya-ss's OFT (``oft_blocks`` [blocks, size, size], ``alpha`` the constraint): each block of output
    rows is rotated by the Cayley transform of its skew-symmetric part."""

    keys = ("oft_blocks",)

    def __init__(self, *args):
        super().__init__(*args)
        self.blocks = self.w["oft_blocks"]
        self.dim = self.blocks.shape[0]
        out_dim = self.sd_module.weight.shape[0]
        self.block_size = out_dim // self.dim
        self.constraint = (0 if self.alpha is None else self.alpha) * out_dim
        self.alpha = None  # the constraint, not a scale
        self.scale = 1.0

    def calc_updown(self, orig_weight):
        blocks = self.blocks.to(orig_weight)
        eye = torch.eye(self.block_size, dtype=blocks.dtype)
        q = blocks - blocks.transpose(-1, -2)
        if self.constraint != 0:
            norm = torch.norm(q.flatten())
            q = q * ((torch.clamp(norm, max=self.constraint) + 1e-8) / (norm + 1e-8))
        rotation = torch.matmul(eye + q, torch.linalg.inv(eye - q))
        grouped = orig_weight.reshape(self.dim, self.block_size, *orig_weight.shape[1:])
        merged = torch.einsum("knm,kn...->km...", rotation, grouped).reshape(orig_weight.shape)
        return self.finalize_updown(merged - orig_weight, orig_weight, orig_weight.shape)


#: tried in this order, as the real module_types list is
KINDS = (Lora, LoHa, IA3, LoKr, Full, Norm, GLoRA, OFT)


def create_module(net, sd_key, w, sd_module):
    for kind in KINDS:
        if kind is LoKr:
            ok = all(f"lokr_w{i}" in w or {f"lokr_w{i}_a", f"lokr_w{i}_b"} <= set(w) for i in (1, 2))
        else:
            ok = all(k in w for k in kind.keys)
        if ok:
            return kind(net, sd_key, w, sd_module)
    raise AssertionError(f"no network kind accepts the keys {', '.join(w)}")
