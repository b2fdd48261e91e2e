"""Stand-in of modules/devices.py."""

import torch

device = torch.device("cpu")
cpu = torch.device("cpu")
dtype = torch.float32
dtype_vae = torch.float16
dtype_unet = torch.float32


def torch_gc():
    pass
