"""Stand-in of the WebUI's CFGDenoiser, with its skip logic (API notes §3, steps 1-8).

Like the real one, it does not trim ``image_cond`` when it skips the unconditional rows, so a
9-channel model with ``batch_cond_uncond`` on fails exactly as in WebUI issue #10802. SDXL's conds are
dicts ('crossattn', 'vector'), joined and sliced key by key as the real ``catenate_conds`` /
``subscript_cond`` do; the refiner switch is checked at the start of every call, as the real one does.
"""

import torch

from modules import sd_samplers_common, shared


def catenate_conds(conds):
    if not isinstance(conds[0], dict):
        return torch.cat(conds)
    return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}


def subscript_cond(cond, a, b):
    if not isinstance(cond, dict):
        return cond[a:b]
    return {key: value[a:b] for key, value in cond.items()}


class CFGDenoiser:
    def __init__(self, inner_model, total_steps, p=None):
        self.inner_model = inner_model  # (x, sigma, cond, image_cond) -> denoised
        self.step = 0
        self.total_steps = total_steps
        self.p = p

    def update_inner_model(self):
        self.inner_model = shared.sd_model.denoise

    def forward(self, x, sigma, uncond, cond, cond_scale, image_cond=None):
        if self.p is not None and sd_samplers_common.apply_refiner(self, sigma):
            cond, uncond = self.p.cond, self.p.uncond
        batch = x.shape[0]
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        image_cond_in = None if image_cond is None else torch.cat([image_cond, image_cond])
        skip_uncond = shared.opts.skip_early_cond != 0 and self.step / self.total_steps <= shared.opts.skip_early_cond
        if skip_uncond:
            if self.p is not None:  # as the WebUI does: the setting lands in the infotext
                self.p.extra_generation_params["Skip Early CFG"] = shared.opts.skip_early_cond
            x_in = x_in[:-batch]
            sigma_in = sigma_in[:-batch]
        cond_in = cond if skip_uncond else catenate_conds([cond, uncond])
        if shared.opts.batch_cond_uncond:
            x_out = self.inner_model(x_in, sigma_in, cond_in, image_cond_in)
        else:
            parts = []
            for i in range(0, x_in.shape[0], batch):
                ic = None if image_cond_in is None else image_cond_in[i:i + batch]
                parts.append(self.inner_model(x_in[i:i + batch], sigma_in[i:i + batch],
                                              subscript_cond(cond_in, i, i + batch), ic))
            x_out = torch.cat(parts)
        if skip_uncond:
            x_out = torch.cat([x_out, x_out[:batch]])  # the cond output stands in for the uncond one
        denoised_cond, denoised_uncond = x_out[:batch], x_out[batch:]
        scale = 1.0 if skip_uncond else cond_scale
        self.step += 1
        return denoised_uncond + scale * (denoised_cond - denoised_uncond)
