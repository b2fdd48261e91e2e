"""Stand-in of modules/processing.py: the hook order of process_images and its settings restore rule.

``process_images`` snapshots only the override keys already in ``opts.data`` and restores only those
(processing.py ~823 in v1.10.1) - the trap that makes ``override_settings`` unsafe for CFG-free.
"""

from contextlib import closing

import torch

from modules import devices, extra_networks, sd_unet, shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from modules.sd_samplers_common import store_latent


class Processed:
    def __init__(self, images, infotexts):
        self.images = images
        self.infotexts = infotexts


class StableDiffusionProcessing:
    def __init__(self, scripts, batch_size=1, steps=1, cfg_scale=1.0, width=64, height=64, seed=0, n_iter=1,
                 override_settings=None, extra_network_data=None, prompt_len=77, init_images=None,
                 enable_hr=False, fail_at_step=None, prompt="", negative_prompt="", sampler_name=None,
                 scheduler=None, refiner_checkpoint=None, refiner_switch_at=None):
        self.scripts = scripts
        self.batch_size, self.steps, self.cfg_scale = batch_size, steps, cfg_scale
        self.width, self.height, self.seed, self.n_iter = width, height, seed, n_iter
        self.override_settings = dict(override_settings or {})
        self.override_settings_restore_afterwards = True
        self.extra_generation_params = {}
        self.extra_network_data = extra_network_data or {}
        self.comments = {}
        self.prompt_len = prompt_len
        self.init_images = init_images
        self.enable_hr = enable_hr
        self.tiling = False
        self.fail_at_step = fail_at_step
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.refiner_checkpoint, self.refiner_switch_at = refiner_checkpoint, refiner_switch_at
        self.refiner_checkpoint_info = None
        self.cond = self.uncond = None
        self.step_callback = None  # tests: run something between two sampling steps
        self.closed = False
        self.sd_model = shared.sd_model

    def comment(self, text):
        self.comments[text] = 1

    def get_token_merging_ratio(self):
        return 0

    def close(self):
        self.closed = True

    def setup_conds(self, generator=None):
        """The prompt's and the negative prompt's conds from the loaded model (again after a refiner switch)."""
        g = generator or torch.Generator().manual_seed(self.seed + 1)
        model = shared.sd_model
        self.cond = model.encode(self.batch_size, self.prompt_len, g)
        self.uncond = model.encode(self.batch_size, self.prompt_len, g, negative=True)

    def sample(self):
        """Euler over sigmas from 14.6 to 0 through the CFG denoiser, as k-diffusion's sampler does."""
        model = shared.sd_model
        g = torch.Generator().manual_seed(self.seed)
        h, w = self.height // 8, self.width // 8
        b = self.batch_size
        sigmas = torch.linspace(14.6, 0.0, self.steps + 1)
        x = torch.randn(b, 4, h, w, generator=g) * sigmas[0]
        self.setup_conds(g)
        image_cond = torch.randn(b, 5, h, w, generator=g) if model.inpaint else None
        denoiser = CFGDenoiser(model.denoise, self.steps, p=self)
        for i in range(self.steps):
            if shared.state.interrupted:
                break
            if self.fail_at_step == i:
                raise RuntimeError("sampling failed on purpose")
            sigma = sigmas[i].expand(b)
            # read at every step, as k-diffusion reads the sampler's extra args (the refiner switch replaces them)
            denoised = denoiser.forward(x, sigma, self.uncond, self.cond, self.cfg_scale, image_cond)
            shared.state.sampling_step = i
            store_latent(denoised)  # a live preview may decode it now, from the progress API's thread
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
            if self.step_callback is not None:
                self.step_callback(i)
        return x


def create_infotext(p):
    """Prompt, negative prompt, then ``key: value`` pairs with values quoted as the WebUI quotes them."""
    from modules.infotext_utils import quote

    params = {"Steps": p.steps, "Sampler": p.sampler_name, "Schedule type": p.scheduler, "CFG scale": p.cfg_scale,
              "Size": f"{p.width}x{p.height}", **p.extra_generation_params}
    text = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {p.negative_prompt}" if p.negative_prompt else ""
    return f"{p.prompt}{negative}\n{text}".strip()


def process_images(p):
    p.scripts.before_process(p)
    stored_opts = {k: shared.opts.data[k] for k in p.override_settings.keys() if k in shared.opts.data}
    try:
        for k, v in p.override_settings.items():
            shared.opts.set(k, v, is_api=True, run_callbacks=False)
        return process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(shared.opts, k, v)


NansException = devices.NansException


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
    """One image at a time through decode_first_stage; on a NaN, the WebUI's auto-revert (processing.py:625-672):
    to bfloat16 when ``auto_vae_precision_bfloat16`` is on, else to fp32 when ``auto_vae_precision`` is on,
    else (or when the VAE already has that dtype) the error."""
    from modules.sd_samplers_common import decode_first_stage

    samples = []
    if check_for_nans:
        devices.test_for_nans(batch, "unet")
    for i in range(batch.shape[0]):
        sample = decode_first_stage(model, batch[i:i + 1])[0]
        if check_for_nans:
            try:
                devices.test_for_nans(sample, "vae")
            except devices.NansException:
                if shared.opts.auto_vae_precision_bfloat16:
                    autofix = torch.bfloat16
                elif shared.opts.auto_vae_precision:
                    autofix = torch.float32
                else:
                    raise
                if devices.dtype_vae == autofix:
                    raise
                devices.dtype_vae = autofix
                model.first_stage_model.to(devices.dtype_vae)
                batch = batch.to(devices.dtype_vae)
                sample = decode_first_stage(model, batch[i:i + 1])[0]
        samples.append(sample if target_device is None else sample.to(target_device))
    return samples


def _init(p):
    """img2img's init: encode the init images (only for models with a real first stage)."""
    if p.init_images is not None and hasattr(shared.sd_model, "encode_first_stage"):
        from modules.sd_samplers_common import images_tensor_to_samples

        p.init_latent = images_tensor_to_samples(torch.stack(list(p.init_images)), model=shared.sd_model)


def _decode(samples):
    """Models with a real first stage go through the WebUI's decode path; the plain stand-in VAE is called."""
    model = shared.sd_model
    if hasattr(model, "decode_first_stage"):
        decoded = torch.stack(decode_latent_batch(model, samples, target_device=devices.cpu, check_for_nans=True))
        return decoded.float()
    return model.first_stage_model(samples.to(devices.dtype_vae)).float()


def process_images_inner(p):
    from modules import sd_models

    if p.refiner_checkpoint not in (None, "", "None", "none"):
        model = sd_models.loadable_models.get(p.refiner_checkpoint)
        if model is None:
            raise Exception(f"Could not find checkpoint with name {p.refiner_checkpoint}")
        p.refiner_checkpoint_info = model.sd_checkpoint_info
    p.scripts.process(p)
    _init(p)
    sd_unet.apply_unet()
    images, infotexts = [], []
    for n in range(p.n_iter):
        if shared.state.interrupted:
            break
        extra_networks.activate(p, p.extra_network_data)  # loads the prompt's Lora networks (none: unloads)
        p.scripts.process_batch(p, batch_number=n)
        samples = p.sample()
        decoded = _decode(samples)
        p.scripts.postprocess_batch(p, decoded, batch_number=n)
        images.append(decoded)
        infotexts.append(create_infotext(p))
    extra_networks.deactivate(p, p.extra_network_data)
    processed = Processed(images, infotexts)
    p.scripts.postprocess(p, processed)
    return processed


def run_job(p):
    """What txt2img/img2img and the API do around process_images: ``p.close()`` always runs."""
    with closing(p):
        return process_images(p)
