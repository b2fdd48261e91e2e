"""Stand-in of modules/processing.py: the hook order of process_images and its settings restore rule.

``process_images`` snapshots only the override keys already in ``opts.data`` and restores only those
(processing.py ~823 in v1.10.1) - the trap that makes ``override_settings`` unsafe for CFG-free.

Sampling follows the real flow where the UNet sees it: img2img starts from the init latent noised to the
first sigma of the part of the schedule ``denoising_strength`` keeps (``sample_img2img``); hires fix
upscales the first pass's latent ("Latent" upscaler) and runs that img2img pass again at the larger size,
in the same batch, after activating the (hires) prompt's extra networks again (``sample_hr_pass``).
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
                 scheduler=None, refiner_checkpoint=None, refiner_switch_at=None, denoising_strength=0.75,
                 hr_scale=2.0, hr_second_pass_steps=0):
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
        self.denoising_strength = denoising_strength
        self.hr_scale, self.hr_second_pass_steps = hr_scale, hr_second_pass_steps
        self.is_hr_pass = False
        self.init_latent = None  # img2img: set from init_images by _init (or by a test, for the plain VAE)
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
        """txt2img from pure noise, or img2img from ``init_latent``; then hires fix's second pass."""
        model = shared.sd_model
        g = torch.Generator().manual_seed(self.seed)
        h, w = self.height // 8, self.width // 8
        b = self.batch_size
        noise = torch.randn(b, 4, h, w, generator=g)
        self.setup_conds(g)
        image_cond = torch.randn(b, 5, h, w, generator=g) if model.inpaint else None
        if self.init_latent is None:
            sigmas = sigma_schedule(self.steps)
            x = self.sample_steps(noise * sigmas[0], sigmas, image_cond)
        else:
            x = self.sample_img2img(self.init_latent, noise, image_cond)
        if not self.enable_hr:
            return x
        return self.sample_hr_pass(x, g)

    def sample_img2img(self, x, noise, image_cond, steps=None):
        """The tail of the schedule that ``denoising_strength`` keeps, from ``x`` noised to its first sigma
        (sd_samplers_kdiffusion.sample_img2img)."""
        from modules.sd_samplers_common import setup_img2img_steps

        steps, t_enc = setup_img2img_steps(self, steps)
        sigmas = sigma_schedule(steps)[steps - t_enc - 1:]
        return self.sample_steps(x + noise * sigmas[0], sigmas, image_cond)

    def sample_hr_pass(self, samples, g):
        """Hires fix: the latent upscaled by ``hr_scale``, new noise, the networks activated again, then
        img2img at the larger size (processing.py sample_hr_pass with a latent upscaler)."""
        if shared.state.interrupted:
            return samples
        self.is_hr_pass = True
        h, w = int(self.height * self.hr_scale) // 8, int(self.width * self.hr_scale) // 8
        samples = torch.nn.functional.interpolate(samples, size=(h, w), mode="bilinear", antialias=False)
        noise = torch.randn(samples.shape, generator=g)
        extra_networks.activate(self, self.extra_network_data)  # hr_extra_network_data: the same prompt here
        image_cond = torch.randn(samples.shape[0], 5, h, w, generator=g) if shared.sd_model.inpaint else None
        samples = self.sample_img2img(samples, noise, image_cond, steps=self.hr_second_pass_steps or self.steps)
        self.is_hr_pass = False
        return samples

    def sample_steps(self, x, sigmas, image_cond):
        """Euler over ``sigmas`` through the CFG denoiser, as k-diffusion's sampler does."""
        model = shared.sd_model
        b = x.shape[0]
        steps = len(sigmas) - 1
        denoiser = CFGDenoiser(model.denoise, steps, p=self)
        for i in range(steps):
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


def sigma_schedule(steps):
    """``steps + 1`` sigmas from 14.6 down to 0 (the stand-in's scheduler)."""
    return torch.linspace(14.6, 0.0, steps + 1)


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

        images = list(p.init_images)
        if len(images) == 1:
            images = images * p.batch_size
        elif len(images) <= p.batch_size:
            p.batch_size = len(images)
        else:
            raise RuntimeError(f"bad number of images passed: {len(images)}; expecting {p.batch_size} or less")
        p.init_latent = images_tensor_to_samples(torch.stack(images), model=shared.sd_model)


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
