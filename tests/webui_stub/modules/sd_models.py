"""Stand-in of the parts of modules/sd_models.py ORT Turbo reads: CheckpointInfo."""

import os

checkpoints_list = {}  # title -> CheckpointInfo, as the WebUI lists models/Stable-diffusion


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
