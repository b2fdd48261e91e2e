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
}
opts = Options(options_templates)
cmd_opts = types.SimpleNamespace(no_half=False, no_half_vae=False, api=False, nowebui=False, medvram=False,
                                 lowvram=False)
data_path = "."
models_path = "./models"
sd_model = None


class State:
    def __init__(self):
        self.interrupted = False
        self.job = ""

    def interrupt(self):
        self.interrupted = True


state = State()
