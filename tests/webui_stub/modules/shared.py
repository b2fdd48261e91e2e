"""Stand-in of modules/shared.py (with the option templates of shared_options.py that matter here)."""

import types

from modules.options import OptionInfo, Options, options_section  # noqa: F401 (the WebUI re-exports them)

options_templates = {
    "sd_unet": OptionInfo("Automatic", "SD Unet", section=("sd", "Stable Diffusion")),
    "skip_early_cond": OptionInfo(0.0, "Ignore negative prompt during early sampling", section=("sd", "SD"),
                                  infotext="Skip Early CFG"),
    "batch_cond_uncond": OptionInfo(True, "Batch cond/uncond", section=("optimizations", "Optimizations")),
    "s_min_uncond": OptionInfo(0.0, "NGMS", section=("optimizations", "Optimizations")),
    "img2img_fix_steps": OptionInfo(False, "With img2img, do exactly the amount of steps", section=("img2img", "img2img")),
    "auto_vae_precision": OptionInfo(True, "Automatically revert VAE to 32-bit floats", section=("vae", "VAE")),
    "sd_vae_decode_method": OptionInfo("Full", "VAE type for decode", section=("vae", "VAE")),
    "sd_vae_encode_method": OptionInfo("Full", "VAE type for encode", section=("vae", "VAE")),
    "auto_vae_precision_bfloat16": OptionInfo(False, "Automatically convert VAE to bfloat16", section=("vae", "VAE")),
    "live_previews_enable": OptionInfo(True, "Show live previews of the created image", section=("ui", "Live previews")),
    "show_progress_grid": OptionInfo(True, "Show previews of all images generated in a batch as a grid"),
    "show_progress_every_n_steps": OptionInfo(10, "Live preview display period"),
    "show_progress_type": OptionInfo("Approx NN", "Live preview method"),
    "live_preview_allow_lowvram_full": OptionInfo(False, "Allow Full live preview method with lowvram/medvram"),
    "live_preview_fast_interrupt": OptionInfo(False, "Return image with chosen live preview method on interrupt"),
}
opts = Options(options_templates)
cmd_opts = types.SimpleNamespace(no_half=False, no_half_vae=False, api=False, nowebui=False, api_auth=None,
                                 medvram=False, lowvram=False, freeze_settings=False)
data_path = "."
models_path = "./models"
sd_model = None
parallel_processing_allowed = True


class State:
    """The parts of shared_state.State that live previews use: the progress API's thread calls
    ``set_current_image`` while the job runs; a failing preview decode is recorded and ignored."""

    def __init__(self):
        self.interrupted = False
        self.job = ""
        self.sampling_step = 0
        self.current_latent = None
        self.current_image = None
        self.current_image_sampling_step = 0
        self.id_live_preview = 0

    def interrupt(self):
        self.interrupted = True

    def set_current_image(self):
        if not parallel_processing_allowed:
            return
        if (self.sampling_step - self.current_image_sampling_step >= opts.show_progress_every_n_steps
                and opts.live_previews_enable and opts.show_progress_every_n_steps != -1):
            self.do_set_current_image()

    def do_set_current_image(self):
        if self.current_latent is None:
            return
        from modules import errors, sd_samplers

        try:
            if opts.show_progress_grid:
                self.assign_current_image(sd_samplers.samples_to_image_grid(self.current_latent))
            else:
                self.assign_current_image(sd_samplers.sample_to_image(self.current_latent))
            self.current_image_sampling_step = self.sampling_step
        except Exception:
            errors.record_exception()  # the WebUI ignores a failed preview

    def assign_current_image(self, image):
        self.current_image = image
        self.id_live_preview += 1


state = State()
