"""Stand-in of modules/sd_samplers_common.py: the VAE decode/encode paths (API notes §9).

``decode_first_stage`` casts to ``dtype_vae`` and picks the decoder by ``sd_vae_decode_method``: the
full VAE goes through ``model.decode_first_stage`` (cast to the VAE's dtype, as the WebUI does),
TAESD through its own small model. ``images_tensor_to_samples`` is img2img's and hires' encode.
"""

import torch

from modules import devices, shared


def setup_img2img_steps(p, steps=None):
    """(schedule length, steps to run - 1) for img2img and hires: with ``img2img_fix_steps`` (or explicit
    steps, as hires passes) the schedule is stretched so exactly the requested steps run, else
    ``denoising_strength`` of ``p.steps`` run (sd_samplers_common.py:22-31)."""
    if shared.opts.img2img_fix_steps or steps is not None:
        requested = steps or p.steps
        total = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        return total, requested - 1
    return p.steps, int(min(p.denoising_strength, 0.999) * p.steps)


def apply_refiner(cfg_denoiser, sigma=None):
    """Switch to the refiner once ``refiner_switch_at`` of the steps are done (sd_samplers_common.py:158-199);
    True when it switched, after the conds were made with the refiner. The stand-in measures progress by
    steps (the WebUI by default by sigma, the same order for its samplers), and writes the infotext's
    "by sampling steps" entry only where the WebUI would: with that setting on."""
    from modules import sd_models

    p = cfg_denoiser.p
    completed_ratio = cfg_denoiser.step / cfg_denoiser.total_steps
    if getattr(shared.opts, "refiner_switch_by_sample_steps", False):
        p.extra_generation_params["Refiner switch by sampling steps"] = True
    info = getattr(p, "refiner_checkpoint_info", None)
    if p.refiner_switch_at is not None and completed_ratio < p.refiner_switch_at:
        return False
    if info is None or shared.sd_model.sd_checkpoint_info == info:
        return False
    p.extra_generation_params["Refiner"] = info.short_title
    p.extra_generation_params["Refiner switch at"] = p.refiner_switch_at
    sd_models.reload_model_weights(info=info)
    devices.torch_gc()
    p.setup_conds()
    cfg_denoiser.update_inner_model()
    return True


approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}


def samples_to_images_tensor(sample, approximation=None, model=None):
    """latents -> images in [-1, 1]. Without ``approximation`` (live previews), ``show_progress_type`` picks it."""
    if approximation is None or (shared.state.interrupted and shared.opts.live_preview_fast_interrupt):
        approximation = approximation_indexes.get(shared.opts.show_progress_type, 0)
        if approximation == 0 and getattr(shared.sd_model, "lowvram", False) \
                and not shared.opts.live_preview_allow_lowvram_full:
            approximation = 1
    if approximation in (1, 2):  # the approximate decoders: a fixed latent -> RGB map, no VAE
        return (sample.to(devices.device, torch.float32)[:, :3] * 0.25).repeat_interleave(8, -1).repeat_interleave(8, -2)
    if approximation == 3:
        from modules import sd_vae_taesd

        return sd_vae_taesd.decoder_model()(sample.to(devices.device, devices.dtype)).detach() * 2 - 1
    model = model or shared.sd_model
    return model.decode_first_stage(sample.to(model.first_stage_model.dtype))


def single_sample_to_image(sample, approximation=None):
    """One preview image, [0, 1] (the WebUI makes a PIL image of it)."""
    return torch.clamp(samples_to_images_tensor(sample.unsqueeze(0), approximation)[0] * 0.5 + 0.5, 0.0, 1.0)


def sample_to_image(samples, index=0, approximation=None):
    return single_sample_to_image(samples[index], approximation)


def samples_to_image_grid(samples, approximation=None):
    return torch.stack([single_sample_to_image(s, approximation) for s in samples])


def store_latent(decoded):
    """Each sampling step: the latent a live preview decodes (from the progress API's thread when parallel)."""
    shared.state.current_latent = decoded
    opts = shared.opts
    if opts.live_previews_enable and opts.show_progress_every_n_steps > 0 \
            and shared.state.sampling_step % opts.show_progress_every_n_steps == 0:
        if not shared.parallel_processing_allowed:
            shared.state.assign_current_image(sample_to_image(decoded))


def decode_first_stage(model, x):
    x = x.to(devices.dtype_vae)
    approx_index = approximation_indexes.get(shared.opts.sd_vae_decode_method, 0)
    return samples_to_images_tensor(x, approx_index, model)


def images_tensor_to_samples(image, approximation=None, model=None):
    """images in [0, 1] -> latents."""
    if approximation is None:
        approximation = approximation_indexes.get(shared.opts.sd_vae_encode_method, 0)
    if approximation == 3:
        from modules import sd_vae_taesd

        return sd_vae_taesd.encoder_model()(image.to(devices.device, devices.dtype))
    model = model or shared.sd_model
    model.first_stage_model.to(devices.dtype_vae)
    image = image.to(devices.device, dtype=devices.dtype_vae) * 2 - 1
    if len(image) > 1:
        return torch.stack([model.get_first_stage_encoding(model.encode_first_stage(torch.unsqueeze(img, 0)))[0]
                            for img in image])
    return model.get_first_stage_encoding(model.encode_first_stage(image))
