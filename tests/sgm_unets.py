"""SDXL UNets built from (the stand-in of) sgm's ``UNetModel``, the class the WebUI loads SDXL checkpoints into.

The full-size configs are the ``network_config`` of generative-models' ``configs/inference/sd_xl_base.yaml``
and ``sd_xl_refiner.yaml`` (which the WebUI v1.10.1 uses for SDXL checkpoints), with ``use_checkpoint``
off as the WebUI's ``repair_config`` sets it. The tiny ones keep what makes the layout SDXL's (levels
without attention, transformer depth per level and in the middle, linear projections, fixed head width,
``label_emb`` on ``y`` of the real widths, the refiner's four levels and context width), at widths that
export and optimize in seconds. The stand-in lives in tests/webui_stub/sgm under sgm's module paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

_STUB = str(Path(__file__).resolve().parent / "webui_stub")
if _STUB not in sys.path:
    sys.path.append(_STUB)  # after everything else: the stand-in shadows nothing that is installed

_COMMON = dict(num_classes="sequential", use_checkpoint=False, in_channels=4, out_channels=4,
               attention_resolutions=[4, 2], num_res_blocks=2, use_spatial_transformer=True,
               use_linear_in_transformer=True, spatial_transformer_attn_type="softmax-xformers", legacy=False)

CONFIGS = {
    # generative-models 45c443b configs/inference/sd_xl_base.yaml, network_config.params
    "sdxl-base": dict(_COMMON, adm_in_channels=2816, model_channels=320, channel_mult=[1, 2, 4],
                      num_head_channels=64, transformer_depth=[1, 2, 10], context_dim=2048),
    # ... and sd_xl_refiner.yaml
    "sdxl-refiner": dict(_COMMON, adm_in_channels=2560, model_channels=384, channel_mult=[1, 2, 4, 4],
                         num_head_channels=64, transformer_depth=4, context_dim=[1280, 1280, 1280, 1280]),
    # the base layout, small: no attention at the first level, depth 1 and 2 below, 2 in the middle
    "tiny-sgm-sdxl": dict(_COMMON, adm_in_channels=2816, model_channels=32, channel_mult=[1, 2, 4],
                          num_res_blocks=1, num_head_channels=8, transformer_depth=[0, 1, 2], context_dim=64),
    # the refiner layout, small: four levels, attention at levels 1-2 and the middle, context 1280
    "tiny-sgm-refiner": dict(_COMMON, adm_in_channels=2560, model_channels=32, channel_mult=[1, 2, 4, 4],
                             num_res_blocks=1, num_head_channels=8, transformer_depth=2,
                             context_dim=[1280, 1280]),
}


def build_sgm_unet(name: str, seed: int = 0, device: str = "cpu") -> torch.nn.Module:
    """The stand-in of sgm's UNetModel for ``CONFIGS[name]``, random weights (fixed ``seed``), fp32, eval mode."""
    from lib_ort.bench.architectures import _randomize_zero_parameters
    from sgm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    with torch.device(device):
        model = UNetModel(**CONFIGS[name])
    if device != "meta":
        _randomize_zero_parameters(model, torch.Generator().manual_seed(seed + 1))
    return model.eval().requires_grad_(False)


def attention_layers(model: torch.nn.Module) -> dict[str, int]:
    """Self- and cross-attention layers of an sgm UNet, counted from its transformer blocks."""
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicTransformerBlock"]
    return {"self": len(blocks), "cross": len(blocks)}
