"""The UNet: ``forward(x, timesteps, context, y=None)`` of the WebUI's ldm/sgm models as one graph.

Attention is traced through SDPA (``attention.sdpa_attention``), the only form of the ldm attention
that ORT fuses. The artefact lies at the root of its folder (``model.onnx`` + ``weights.pb``), its
manifest carries the IO spec, the family and the shape ranges TensorRT profiles are built for.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import sdpa_attention
from ..describe import UnetDescription, describe_unet
from ..recipes import get_recipe
from .base import Model, Part

INPUT_NAMES = ("sample", "timestep", "encoder_hidden_states", "y")
OUTPUT_NAME = "latent"


class _OnnxSignature(nn.Module):
    """Gives the UNet the ONNX input names; ``y`` only for models that take it."""

    def __init__(self, unet: nn.Module, takes_y: bool):
        super().__init__()
        self.unet = unet
        self.takes_y = takes_y

    def forward(self, sample, timestep, encoder_hidden_states, y=None):
        if self.takes_y:
            return self.unet(sample, timestep, encoder_hidden_states, y=y)
        return self.unet(sample, timestep, encoder_hidden_states)


def default_shape_ranges(spatial_multiple: int) -> dict:
    """Latent sizes 64..2048 px, batch up to 16 rows (8 images with CFG), up to 8 prompt chunks."""
    return {"batch": [1, 16], "height": [spatial_multiple, 256], "width": [spatial_multiple, 256],
            "sequence": [1, 77 * 8]}


class UnetPart(Part):
    name = "unet"
    output_name = OUTPUT_NAME

    def input_names(self, description: UnetDescription) -> tuple[str, ...]:
        return INPUT_NAMES if description.io.adm_dim is not None else INPUT_NAMES[:3]

    def graph(self, model, description):
        return _OnnxSignature(model, description.io.adm_dim is not None).eval()

    def trace_inputs(self, description):
        io = description.io
        m = io.spatial_multiple
        g = torch.Generator().manual_seed(0)
        args = [
            torch.randn(2, io.in_channels, 2 * m, 3 * m, generator=g),
            torch.tensor([999.0, 500.5]),
            torch.randn(2, 77, io.context_dim, generator=g),
        ]
        if io.adm_dim:
            args.append(torch.randn(2, io.adm_dim, generator=g))
        return tuple(args)

    def dynamic_axes(self, description):
        axes = {"sample": {0: "B", 2: "H", 3: "W"}, "timestep": {0: "B"},
                "encoder_hidden_states": {0: "B", 1: "S"}, OUTPUT_NAME: {0: "B", 2: "H", 3: "W"}}
        if description.io.adm_dim is not None:
            axes["y"] = {0: "B"}
        return axes

    def export_info(self, description):
        return {"family": description.family.value, "io": description.io.to_dict(),
                "parameters": description.parameters}

    def child_job(self, recipe):
        return {"fp32_time_embedding": recipe.get("fp32_time_embedding"), "placement_provider": recipe["provider"]}


UNET_PART = UnetPart()


class UnetModel(Model):
    kind = "unet"
    parts = (UNET_PART,)

    def describe(self, model):
        return describe_unet(model)

    def label(self, description):
        return f"the {description.label} UNet"

    def trace_context(self, model):
        return sdpa_attention(model)

    def recipe(self, ep, precision=None):
        return get_recipe(ep)

    def manifest(self, info, results, files, options):
        result = results[UNET_PART.name]
        return {
            "family": info["family"],
            "io": info["io"],
            "input_names": info["input_names"],
            "output_name": info["output_name"],
            "io_types": result["io_types"],
            "shape_ranges": options.get("shape_ranges") or default_shape_ranges(info["io"]["spatial_multiple"]),
            "fused_ops": result["fused_ops"],
            "fp32_nodes": result.get("fp32_nodes", []),
            # Memcpy nodes in the graph ORT optimized for the provider (None: the toolchain's ORT lacks it)
            "placement": result.get("placement"),
        }


UNET = UnetModel()
