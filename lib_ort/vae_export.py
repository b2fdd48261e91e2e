"""Export a Stable Diffusion VAE (decoder, and encoder for img2img/hires) to fp32 ONNX.

The graphs compute exactly what the WebUI's ``first_stage_model`` computes between the calls the WebUI
makes to it, so the WebUI keeps its own scaling (``scale_factor``), chunking and sampling:

* ``decoder``: ``latent`` [B, 4, h, w] -> ``image`` [B, 3, 8h, 8w] = ``decoder(post_quant_conv(z))``
  (what ``first_stage_model.decode`` returns, in [-1, 1] before the WebUI clamps it);
* ``encoder``: ``image`` [B, 3, H, W] -> ``moments`` [B, 8, H/8, W/8] = ``quant_conv(encoder(x))``, the
  mean and log-variance of the posterior that ``first_stage_model.encode`` wraps in a distribution.

Each part is exported into its own sub-folder in the layout of a UNet export (``model.onnx``,
``export.json``, weights gathered into ``weights.pb`` where the ``onnx`` package exists), so the
optimization child optimizes it exactly as it optimizes a UNet. Batch, height and width are dynamic.
The tracing reuses the UNet export's choices (TorchScript exporter, fp32, CPU, ``onnx``-free mode).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ExportError
from .export import (DEFAULT_OPSET, MODEL_FILE, WEIGHTS_FILE, on_cpu_in_fp32, onnx_available, staged_folder,
                     without_onnx_package)
from .graph import consolidate_external_data

PARTS = ("decoder", "encoder")
INFO_FILE = "vae-export.json"
#: graph input and output names of each part
PART_IO = {"decoder": ("latent", "image"), "encoder": ("image", "moments")}


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


def _trace_input(part: str, d: VaeDescription) -> torch.Tensor:
    """B=2 and H != W so that no dynamic dimension is specialised while tracing."""
    g = torch.Generator().manual_seed(0)
    if part == "decoder":
        return torch.randn(2, d.latent_channels, 3, 2, generator=g)
    return torch.rand(2, d.image_channels, 3 * d.scale, 2 * d.scale, generator=g) * 2 - 1


def _export_part(graph: nn.Module, part: str, d: VaeDescription, folder: Path, opset: int, consolidate: bool) -> dict:
    folder.mkdir()
    in_name, out_name = PART_IO[part]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            graph, (_trace_input(part, d),), str(folder / MODEL_FILE), dynamo=False,
            input_names=[in_name], output_names=[out_name],
            dynamic_axes={in_name: {0: "B", 2: "H", 3: "W"}, out_name: {0: "B", 2: "OH", 3: "OW"}},
            opset_version=opset, do_constant_folding=True, export_params=True,
        )
    if consolidate:
        consolidate_external_data(folder / MODEL_FILE, WEIGHTS_FILE)
    info = {
        "kind": "vae", "part": part, "vae": d.to_dict(), "opset": opset, "input_names": [in_name],
        "output_name": out_name, "torch": torch.__version__, "export_s": round(time.perf_counter() - start, 2),
        "weights_consolidated": consolidate,
    }
    # the optimization child reads export.json of the folder it optimizes (weights_consolidated)
    (folder / "export.json").write_text(json.dumps(info, indent=2))
    return info


def export_vae(vae: nn.Module, out_dir: str | os.PathLike, *, parts=PARTS, opset: int = DEFAULT_OPSET,
               consolidate: bool | None = None, progress=None) -> dict:
    """Export ``parts`` of ``vae`` into ``out_dir/<part>/``; returns what ``vae-export.json`` records.

    ``out_dir`` must not exist; it appears only when every part is complete. The VAE is moved to CPU
    fp32 for the trace and put back afterwards. ``progress`` is an optional ``callable(fraction, message)``.
    """
    out_dir = Path(out_dir)
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise ValueError(f"VAE parts must be some of {PARTS}, got {tuple(parts)}")
    report = progress or (lambda fraction, message: None)
    try:
        d = describe_vae(vae)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    consolidate = onnx_available() if consolidate is None else consolidate
    graphs = {"decoder": DecoderGraph, "encoder": EncoderGraph}
    start = time.perf_counter()
    with staged_folder(out_dir, "the VAE") as work:
        infos = {}
        with on_cpu_in_fp32(vae), without_onnx_package(), torch.no_grad():
            for i, part in enumerate(parts):
                report(i / len(parts), f"tracing the VAE {part} ({d.parameters / 1e6:.0f} M parameters in the VAE)")
                infos[part] = _export_part(graphs[part](vae).eval(), part, d, work / part, opset, consolidate)
        summary = {"kind": "vae", "vae": d.to_dict(), "parts": list(parts), "opset": opset, "torch": torch.__version__,
                   "export_s": round(time.perf_counter() - start, 2), "io": {p: infos[p]["input_names"] + [
                       infos[p]["output_name"]] for p in parts}}
        (work / INFO_FILE).write_text(json.dumps(summary, indent=2))
    report(1.0, "VAE export done")
    return summary


def load_vae_export_info(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / INFO_FILE).read_text())
