"""What a UNet is, read from the module itself.

The WebUI loads SD1/SD2 as ldm ``UNetModel`` and SDXL as sgm ``UNetModel``; merges, pruned and
renamed checkpoints make file names useless, so the family and the input/output widths are read
from the layers: the first convolution gives the input channels, the cross-attention key
projection gives the context width, the class/ADM embedding gives the ``y`` width, and a linear
``proj_in`` tells SD2 from SD1. The same rules read diffusers' ``UNet2DConditionModel`` (used for
SDXL-shaped test models), so nothing here imports ldm, sgm or diffusers.
"""

from __future__ import annotations

import dataclasses
import enum

import torch
from torch import nn


class Family(str, enum.Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"


#: The ADM (``y``) width of the SDXL refiner: pooled 1280 + 5 size embeddings of 256.
REFINER_ADM_WIDTH = 2560
#: The context width of the SDXL refiner (OpenCLIP-bigG only).
REFINER_CONTEXT_WIDTH = 1280


@dataclasses.dataclass(frozen=True)
class IOSpec:
    """The tensors a UNet takes and returns, as widths (batch, size and sequence are dynamic)."""

    in_channels: int
    out_channels: int
    context_dim: int
    adm_dim: int | None
    #: H and W of the latent must be multiples of this (2 ** number of downsamplings).
    spatial_multiple: int

    @property
    def inpaint(self) -> bool:
        return self.in_channels == 9

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class UnetDescription:
    family: Family
    io: IOSpec
    parameters: int

    @property
    def label(self) -> str:
        """A short human name such as ``SD2 inpaint``."""
        name = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner"}[self.family.value]
        return f"{name} inpaint" if self.io.inpaint else name


def _first(module: nn.Module, predicate):
    for name, sub in module.named_modules():
        if predicate(name, sub):
            return name, sub
    return None, None


def _adm_width(module: nn.Module) -> int | None:
    """Width of ``y``: ldm/sgm ``label_emb`` or diffusers' projection class embedding."""
    label_emb = getattr(module, "label_emb", None)
    if label_emb is not None:
        if isinstance(label_emb, nn.Embedding):
            return None  # class-conditional on integer labels: not a Stable Diffusion UNet
        _, linear = _first(label_emb, lambda n, m: isinstance(m, nn.Linear))
        return linear.in_features if linear is not None else None
    class_embedding = getattr(module, "class_embedding", None)
    if class_embedding is not None:
        _, linear = _first(class_embedding, lambda n, m: isinstance(m, nn.Linear))
        return linear.in_features if linear is not None else None
    return None


def describe_unet(module: nn.Module) -> UnetDescription:
    """Read the family and IO widths of a WebUI-style UNet (``forward(x, timesteps, context, y=None)``).

    Raises ``ValueError`` for a module that is not a text-conditioned latent UNet.
    """
    inner = getattr(module, "unet", module)  # our diffusers wrapper keeps the model as .unet
    _, first_conv = _first(inner, lambda n, m: isinstance(m, nn.Conv2d))
    convs = [m for m in inner.modules() if isinstance(m, nn.Conv2d)]
    _, cross_k = _first(inner, lambda n, m: n.endswith("attn2.to_k") and isinstance(m, nn.Linear))
    if first_conv is None or cross_k is None:
        raise ValueError(
            f"{type(module).__name__} is not a text-conditioned UNet: it has no convolution or no "
            "cross-attention layer (attn2.to_k)."
        )
    _, proj_in = _first(inner, lambda n, m: n.endswith("proj_in"))
    downsamplings = sum(1 for m in convs if tuple(m.stride) == (2, 2))
    adm = _adm_width(inner)
    context = cross_k.in_features

    if adm is not None:
        refiner = adm == REFINER_ADM_WIDTH or context == REFINER_CONTEXT_WIDTH
        family = Family.SDXL_REFINER if refiner else Family.SDXL
    elif isinstance(proj_in, nn.Linear):
        family = Family.SD2
    else:
        family = Family.SD1

    io = IOSpec(
        in_channels=first_conv.in_channels,
        out_channels=convs[-1].out_channels,
        context_dim=context,
        adm_dim=adm,
        spatial_multiple=2 ** downsamplings,
    )
    parameters = sum(p.numel() for p in module.parameters())
    return UnetDescription(family=family, io=io, parameters=parameters)


def state_dict_digest(module: nn.Module) -> str:
    """sha256 of the module's weights (names, shapes, dtypes and bytes): a content key for caching."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()
