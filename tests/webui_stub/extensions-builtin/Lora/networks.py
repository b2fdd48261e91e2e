"""Stand-in of the Lora extension's networks.py (v1.10.1): how and when network weights are applied.

* ``assign_network_names_to_compvis_modules`` (on model load): every module of ``sd_model.model`` gets
  ``network_layer_name`` = its dotted name with ``_`` (``diffusion_model_input_blocks_1_1_proj_in``).
* ``load_networks`` (from the ``lora`` extra network's ``activate``): ``loaded_networks`` becomes the
  prompt's networks with their te/unet multipliers. Keys in the file are ``<layer>.<part>``; a layer
  ``lora_unet_<name>`` is looked up as ``diffusion_model_<name>``.
* ``network_apply_weights(module)``, called by the patched forwards of Linear, Conv2d, GroupNorm and
  LayerNorm: lazily, per module, when the wanted set differs from ``network_current_names``: backs the
  weight and bias up (once, on the CPU), restores them, adds each network's delta (and its extra bias),
  records the set. A delta with an extra bias on a layer without one creates the bias.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file

import network
from modules import shared

loaded_networks: list = []
networks_in_memory: dict = {}
#: name -> file, what list_available_networks finds in the Lora folder
available_networks: dict = {}
originals = None


def assign_network_names_to_compvis_modules(sd_model):
    mapping = {}
    for name, module in sd_model.model.named_modules():
        layer = name.replace(".", "_")
        mapping[layer] = module
        module.network_layer_name = layer
    sd_model.network_layer_mapping = mapping


def load_network(name, filename):
    net = network.Network(name, filename, os.path.getmtime(filename))
    mapping = shared.sd_model.network_layer_mapping
    grouped: dict = {}
    for key, weight in load_file(filename).items():
        layer, _, part = key.partition(".")
        sd_key = layer.replace("lora_unet", "diffusion_model") if layer.startswith("lora_unet") else layer
        if sd_key not in mapping:
            continue  # the real one logs keys it could not match and goes on
        grouped.setdefault(sd_key, {})[part] = weight
    for sd_key, w in grouped.items():
        net.modules[sd_key] = network.create_module(net, sd_key, w, mapping[sd_key])
    return net


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    loaded_networks.clear()
    for i, name in enumerate(names):
        filename = available_networks.get(name)
        if filename is None:
            continue  # "Lora not found" in the real one's comments
        net = networks_in_memory.get(name)
        if net is None or os.path.getmtime(filename) > net.mtime:
            net = networks_in_memory[name] = load_network(name, filename)
        net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
        net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
        net.dyn_dim = dyn_dims[i] if dyn_dims else 1.0
        loaded_networks.append(net)


def _backup(tensor):
    return None if tensor is None else tensor.to("cpu", copy=True)


def network_restore_weights_from_backup(module):
    weight = getattr(module, "network_weights_backup", None)
    bias = getattr(module, "network_bias_backup", None)
    if weight is None and bias is None:
        return
    if weight is not None:
        module.weight.copy_(weight)
    if bias is None:
        module.bias = None
    else:
        module.bias.copy_(bias)


def network_apply_weights(module):
    layer = getattr(module, "network_layer_name", None)
    if layer is None:
        return
    current = getattr(module, "network_current_names", ())
    wanted = tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in loaded_networks)
    if getattr(module, "network_weights_backup", None) is None and wanted != ():
        if current != ():
            raise RuntimeError(f"{layer} - no backup weights found and current weights are not unchanged")
        module.network_weights_backup = _backup(module.weight)
    if getattr(module, "network_bias_backup", None) is None and wanted != ():
        module.network_bias_backup = _backup(getattr(module, "bias", None))
    if current == wanted:
        return
    with torch.no_grad():
        network_restore_weights_from_backup(module)
        for net in loaded_networks:
            net_module = net.modules.get(layer)
            if net_module is None:
                continue
            updown, ex_bias = net_module.calc_updown(module.weight)
            module.weight.copy_((module.weight.to(updown.dtype) + updown).to(module.weight.dtype))
            if ex_bias is not None:
                if module.bias is None:
                    module.bias = torch.nn.Parameter(ex_bias.to(module.weight.dtype))
                else:
                    module.bias.copy_((module.bias + ex_bias).to(module.bias.dtype))
    module.network_current_names = wanted


class LoraPatches:
    """The forwards the extension replaces while it is loaded (lora_patches.py), undone on unload."""

    KINDS = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)

    def __init__(self):
        self.saved = {kind: kind.forward for kind in self.KINDS}
        for kind, original in self.saved.items():
            def forward(module, *args, _original=original, **kwargs):
                network_apply_weights(module)
                return _original(module, *args, **kwargs)

            kind.forward = forward

    def undo(self):
        for kind, original in self.saved.items():
            kind.forward = original
