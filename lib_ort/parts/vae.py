"""The VAE: its decoder (for every image) and its encoder (img2img, hires fix), in one artefact.

The graphs compute exactly what the WebUI's ``first_stage_model`` computes between the calls the WebUI
makes to it, so the WebUI keeps its own scaling (``scale_factor``), chunking and sampling:

* ``decoder``: ``latent`` [B, 4, h, w] -> ``image`` [B, 3, 8h, 8w] = ``decoder(post_quant_conv(z))``
  (what ``first_stage_model.decode`` returns, in [-1, 1] before the WebUI clamps it);
* ``encoder``: ``image`` [B, 3, H, W] -> ``moments`` [B, 8, H/8, W/8] = ``quant_conv(encoder(x))``, the
  mean and log-variance of the posterior that ``first_stage_model.encode`` wraps in a distribution.

Each part lies in its own sub-folder (``decoder/``, ``encoder/``) of the export and of the artefact.
A VAE artefact is keyed by the checkpoint's hash *and* the VAE's own hash: the VAE the WebUI runs is
either the checkpoint's own or one picked in its VAE dropdown, and an artefact of one must never
decode for another. Batch, height and width are dynamic.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from ..recipes import get_vae_recipe
from .base import Model, Part

INFO_FILE = "vae-export.json"


@dataclasses.dataclass(frozen=True)
class VaeDescription:
    """What a VAE takes and returns; read from its layers, so ldm, sgm and diffusers VAEs all work."""

    flavour: str  # "ldm" (the WebUI's SD1/SD2 class), "sgm" (the WebUI's SDXL class) or "diffusers"
    latent_channels: int
    image_channels: int
    #: image side / latent side (8 for every Stable Diffusion VAE)
    scale: int
    parameters: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def describe_vae(vae: nn.Module) -> VaeDescription:
    """Raise ``ValueError`` for a module that is not an ``AutoencoderKL``-shaped VAE."""
    for name in ("encoder", "decoder", "post_quant_conv"):
        if getattr(vae, name, None) is None:
            raise ValueError(f"{type(vae).__name__} is not an AutoencoderKL-style VAE: it has no {name}")
    module = type(vae).__module__
    flavour = "diffusers" if module.startswith("diffusers") else "sgm" if module.startswith("sgm") else "ldm"
    convs = [m for m in vae.decoder.modules() if isinstance(m, nn.Conv2d)]
    downsamplings = sum(1 for m in vae.encoder.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) == (2, 2))
    return VaeDescription(flavour=flavour, latent_channels=vae.post_quant_conv.in_channels,
                          image_channels=convs[-1].out_channels, scale=2 ** downsamplings,
                          parameters=sum(p.numel() for p in vae.parameters()))


class DecoderGraph(nn.Module):
    """``first_stage_model.decode`` without the WebUI's scaling: ``decoder(post_quant_conv(z))``."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder

    def forward(self, latent):
        return self.decoder(self.post_quant_conv(latent))


class EncoderGraph(nn.Module):
    """The posterior's parameters: ``quant_conv(encoder(x))`` (some diffusers VAEs have no quant_conv)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = getattr(vae, "quant_conv", None) or nn.Identity()

    def forward(self, image):
        return self.quant_conv(self.encoder(image))


class VaePart(Part):
    """A decoder or an encoder: one input, one output, batch and sides dynamic."""

    def __init__(self, name: str, input_name: str, output_name: str, graph_class: type[nn.Module]):
        self.name = self.folder = name
        self.input_name, self.output_name = input_name, output_name
        self.graph_class = graph_class

    def input_names(self, description):
        return (self.input_name,)

    def graph(self, model, description):
        return self.graph_class(model).eval()

    def trace_inputs(self, d: VaeDescription):
        g = torch.Generator().manual_seed(0)
        if self.name == "decoder":
            return (torch.randn(2, d.latent_channels, 3, 2, generator=g),)
        return (torch.rand(2, d.image_channels, 3 * d.scale, 2 * d.scale, generator=g) * 2 - 1,)

    def dynamic_axes(self, description):
        return {self.input_name: {0: "B", 2: "H", 3: "W"}, self.output_name: {0: "B", 2: "OH", 3: "OW"}}

    def export_info(self, description):
        return {"kind": "vae", "part": self.name, "vae": description.to_dict()}


DECODER = VaePart("decoder", "latent", "image", DecoderGraph)
ENCODER = VaePart("encoder", "image", "moments", EncoderGraph)
PARTS = (DECODER.name, ENCODER.name)
#: graph input and output names of each part
PART_IO = {p.name: (p.input_name, p.output_name) for p in (DECODER, ENCODER)}


class VaeModel(Model):
    kind = "vae"
    parts = (DECODER, ENCODER)
    info_file = INFO_FILE
    export_share = 0.2  # a VAE traces in seconds; Olive's start-up is most of its time

    def describe(self, model):
        return describe_vae(model)

    def label(self, description):
        return "the VAE"

    def summary(self, description, infos, opset, export_s):
        return {"kind": "vae", "vae": description.to_dict(), "parts": list(infos), "opset": opset,
                "torch": torch.__version__, "export_s": export_s,
                "io": {p: infos[p]["input_names"] + [infos[p]["output_name"]] for p in infos}}

    def exported_parts(self, info):
        return tuple(p for p in self.parts if p.name in info["parts"])

    def recipe(self, ep, precision):
        return get_vae_recipe(ep, precision)

    def manifest(self, info, results, files, options):
        parts = {}
        for part in self.exported_parts(info):
            result = results[part.name]
            parts[part.name] = {"model_file": part.file("model.onnx"), "input_name": part.input_name,
                                "output_name": part.output_name, "io_types": result["io_types"],
                                "fused_ops": result["fused_ops"]}
        return {"kind": self.kind, "vae": dict(options["vae"]), "description": info["vae"], "parts": parts}


VAE = VaeModel()


def export_vae(vae: nn.Module, out_dir: str | os.PathLike, *, parts=PARTS, **kwargs) -> dict:
    """Export ``parts`` of ``vae`` into ``out_dir/<part>/``; returns what ``vae-export.json`` records."""
    from ..export import export_model

    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise ValueError(f"VAE parts must be some of {PARTS}, got {tuple(parts)}")
    return export_model(VAE, vae, out_dir, parts=tuple(p for p in VAE.parts if p.name in parts), **kwargs).info
