"""The WebUI's Lora extension (LoRA and the LyCORIS kinds) on the ONNX UNet, without a new export.

The built-in Lora extension changes weights lazily: its patched ``forward`` of each Linear, Conv2d,
GroupNorm, LayerNorm and MultiheadAttention calls ``networks.network_apply_weights(module)``, which
compares the wanted network set with the module's current one, restores the module's backup and adds
each network's ``calc_updown`` delta in place. The ONNX UNet never calls those forwards. So before an
ONNX call whose wanted set differs from the one the session carries, :class:`NetworkWeights` calls the
extension's own ``network_apply_weights`` on the modules the networks touch (found through
``sys.modules``: the WebUI imports the extension's ``networks`` module by that name), reads the changed
torch parameters, writes them into copies of the initializers they live in (``lib_ort.weight_map``) and
rebuilds the session with those in place of the artefact's own. Every network kind that ends as a
weight delta works without code of its own here; what cannot be mapped falls back to PyTorch with the
reason. Only the changed initializers are held, never a second copy of the whole UNet.
"""

from __future__ import annotations

import contextlib
import sys
import time

import torch
from modules import shared

from ..onnx_weights import Weights
from ..weight_map import WeightMap
from . import service

#: the module name the Lora extension's script imports its core under
EXTENSION_MODULE = "networks"
#: suffixes the extension adds to a MultiheadAttention's layer name for its q/k/v/out networks
_MHA_SUFFIXES = ("_q_proj", "_k_proj", "_v_proj", "_out_proj")


def lora_extension():
    """The Lora extension's ``networks`` module when it is loaded and has what this relies on, else None."""
    module = sys.modules.get(EXTENSION_MODULE)
    if module is None or not hasattr(module, "network_apply_weights") or not hasattr(module, "loaded_networks"):
        return None
    return module


def wanted_set(extension) -> tuple:
    """What the extension compares with a module's ``network_current_names``: the same tuple."""
    if extension is None:
        return ()
    return tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in extension.loaded_networks)


def changed_layers(extension) -> set:
    """The layer names (``network_layer_name``) whose weights the loaded networks change."""
    layers = set()
    for net in extension.loaded_networks:
        for key in net.modules:
            layers.add(key)
            for suffix in _MHA_SUFFIXES:
                if key.endswith(suffix):
                    layers.add(key[: -len(suffix)])
    return layers


def original_value(module, name: str, param):
    """The parameter's value without any network: the extension's backup when it changed the module."""
    if getattr(module, "network_current_names", ()) == ():
        return param
    weights = getattr(module, "network_weights_backup", None)
    bias = getattr(module, "network_bias_backup", None)
    if isinstance(weights, tuple):  # MultiheadAttention: (in_proj_weight, out_proj.weight)
        chosen = {"in_proj_weight": weights[0], "out_proj.weight": weights[1], "out_proj.bias": bias}.get(name)
    else:
        chosen = {"weight": weights, "bias": bias}.get(name)
    return param if chosen is None else chosen


@contextlib.contextmanager
def own_weights(unet):
    """The checkpoint's own weights in ``unet`` while the block runs (an export's trace), then the networks'
    again, exactly as the extension left them.

    After a job with networks the extension keeps the changed weights in place until a module's next forward
    sees another wanted set, so a trace right after would bake the networks into the artefact. Here every
    module whose ``network_current_names`` is set gets its backup's values copied in (a bias a network added
    is taken away), with the names left as they are: the patched forwards the trace calls see "nothing to
    change" and keep the own weights. Afterwards the changed values are copied back."""
    saved = []  # (param, its changed value) and (module, the bias a network added)
    try:
        with torch.no_grad():
            for module in unet.modules():
                if getattr(module, "network_current_names", ()) == ():
                    continue
                added_bias = (getattr(module, "network_weights_backup", None) is not None
                              and getattr(module, "network_bias_backup", None) is None
                              and isinstance(getattr(module, "bias", None), torch.nn.Parameter))
                for pname, param in list(module.named_parameters()):
                    if pname == "bias" and added_bias:
                        saved.append((module, param))
                        module.bias = None
                        continue
                    original = original_value(module, pname, param)
                    if original is not param:
                        saved.append((param, param.detach().clone()))
                        param.copy_(original.to(param.device, param.dtype))
        yield
    finally:
        with torch.no_grad():
            for owner, value in reversed(saved):
                if isinstance(owner, torch.nn.Module):
                    owner.bias = value
                else:
                    owner.copy_(value)


class NetworkWeights:
    """Keeps one ``OrtUnet``'s session in step with the Lora extension's wanted network set."""

    def __init__(self):
        self.ort = None  # the runner whose session this state describes
        self.applied: tuple = ()  # the wanted set its session carries
        self.touched: set[str] = set()  # torch module names whose changed weights it carries
        self.refused: tuple | None = None  # (wanted set, reason) of a set that cannot be served
        self.map: WeightMap | None = None
        self.weights: Weights | None = None
        self.last_switch_s: float | None = None

    def sync(self, ort, unet) -> str | None:
        """Make ``ort``'s session carry the wanted set; None when it does, else why this call must run on PyTorch."""
        if ort is not self.ort:  # a new session: it carries the artefact's own weights
            self.ort, self.applied, self.touched, self.refused = ort, (), set(), None
            self.map = self.weights = None
        extension = lora_extension()
        wanted = wanted_set(extension)
        if wanted == self.applied:
            return None
        if self.refused is not None and self.refused[0] == wanted:
            return self.refused[1]
        try:
            reason = self._switch(ort, unet, extension, wanted)
        except Exception as exc:  # the extension's own code raised: this generation runs on PyTorch, never fails
            reason = f"the Lora extension could not apply the networks for ORT ({type(exc).__name__}: {exc})"
        self.refused = None if reason is None else (wanted, reason)
        return reason

    def _switch(self, ort, unet, extension, wanted: tuple) -> str | None:
        if wanted and getattr(shared.opts, "lora_functional", False):
            return "Lora networks applied on the fly ('Lora: use old method', lora_functional) change no weights"
        start = time.perf_counter()
        modules = {name: m for name, m in unet.named_modules() if getattr(m, "network_layer_name", None)}
        layers = changed_layers(extension) if wanted else set()
        now = {name for name, m in modules.items() if m.network_layer_name in layers}
        try:
            weight_map = self._weight_map(ort, unet, modules)
        except Exception as exc:
            return f"the artefact's weights could not be matched to the PyTorch UNet ({type(exc).__name__}: {exc})"
        for name in sorted(now | self.touched):
            extension.network_apply_weights(modules[name])
        values = {}
        for name in sorted(now):
            for pname, param in modules[name].named_parameters():  # after: a network may add a bias
                full = f"{name}.{pname}"
                original = original_value(modules[name], pname, param)
                if original is not param and torch.equal(original.to(param.device, param.dtype), param):
                    continue  # not changed (a LoRA leaves the bias as it is): the artefact's own stays
                if full not in weight_map.places:
                    why = weight_map.unmapped.get(full, "a weight the network adds; the artefact has none there")
                    return f"a network changes {full}, which the ONNX UNet cannot take ({why})"
                values[full] = param.detach().float().cpu().numpy()
        overrides = weight_map.overrides(values, self.weights) if values else {}
        try:
            ort.replace_weights(overrides)
        except Exception as exc:
            inline = sorted(n for n in overrides if self.weights.entries[n].external is None)
            where = f"; stored inside the model file: {', '.join(inline)}" if inline else ""
            reason = f"ONNX Runtime could not take the network weights ({type(exc).__name__}: {exc}{where})"
            try:
                ort.replace_weights({})
                self.applied, self.touched = (), set()
            except Exception:
                pass  # the runner has no session: this call falls back, the next bind makes a new one
            return reason
        self.applied, self.touched = wanted, now
        self.last_switch_s = time.perf_counter() - start
        label = ", ".join(f"{n[0]}:{n[2]:g}" for n in wanted) or "none"
        service.log(f"networks on the ONNX UNet: {label} ({len(overrides)} weights replaced, {self.last_switch_s:.1f} s)")
        return None

    def _weight_map(self, ort, unet, modules) -> WeightMap:
        """The artefact's map (saved at optimization time or on first use); derived from the torch UNet's
        values without networks when the artefact has none, and saved beside it for the next time."""
        if self.map is None:
            artefact = ort.artefact
            self.weights = Weights(artefact.model_path)
            found = WeightMap.load(artefact.folder)
            if found is None or found.model_file != artefact.model_path.name:
                owners = {f"{name}.": m for name, m in modules.items()}
                params = {}
                for full, param in unet.named_parameters():
                    module_name, _, pname = full.rpartition(".")
                    module = owners.get(f"{module_name}.")
                    value = original_value(module, pname, param) if module is not None else param
                    params[full] = value.detach().float().cpu().numpy()
                found = WeightMap.derive(params, self.weights)
                try:
                    found.save(artefact.folder)
                except OSError as exc:
                    service.log(f"could not save the weight map beside {artefact.id} ({exc}); it is derived again next time")
            self.map = found
        return self.map
