"""Stand-in of the parts of modules/sd_models.py ORT Turbo meets: CheckpointInfo and the refiner's
``reload_model_weights``."""

import os

checkpoints_list = {}  # title -> CheckpointInfo, as the WebUI lists models/Stable-diffusion
#: what loading a checkpoint file gives (filename -> the stand-in's model object): set by the tests
loadable_models = {}


def reload_model_weights(sd_model=None, info=None):
    """Switch to the checkpoint ``info`` with the SD Unet routing of v1.10.1 (sd_models.py:940-1002).

    The SD Unet is set to "None" first. A checkpoint of another config (SDXL base -> refiner) is then created
    anew by ``load_model``, which runs the model-loaded callbacks and does NOT apply the SD Unet again; one of
    the same config gets the new weights, the callbacks, and ``apply_unet()``. (The stand-in swaps model
    objects where the WebUI loads weights into the same one; the cache of ``sd_checkpoints_limit`` > 1 is
    not modelled.)
    """
    from modules import script_callbacks, sd_unet, shared

    current = sd_model or shared.sd_model
    if current is not None and current.sd_checkpoint_info.filename == info.filename:
        return current
    target = loadable_models[info.filename]
    if current is not None:
        sd_unet.apply_unet("None")
    shared.sd_model = target
    script_callbacks.model_loaded_callback(target)
    if current is None or target.used_config != current.used_config:
        return target  # load_model: no apply_unet
    sd_unet.apply_unet()
    return target


class CheckpointInfo:
    def __init__(self, filename, sha256, ckpt_dir="models/Stable-diffusion"):
        self.filename = filename
        relative = os.path.relpath(filename, ckpt_dir) if filename.startswith(ckpt_dir) else os.path.basename(filename)
        self.name = relative
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(relative.replace("/", "_").replace("\\\\", "_"))[0]
        self.sha256 = sha256
        self.shorthash = sha256[:10] if sha256 else None
        self.title = f"{relative} [{self.shorthash}]"
        self.short_title = self.name_for_extra if self.shorthash is None else f"{self.name_for_extra} [{self.shorthash}]"
