"""Stand-in of the Lora extension's scripts/lora_script.py: what it sets up when the WebUI loads it
(the WebUI puts the extension's folder first on ``sys.path`` while it imports the script, so its
modules are imported under their own names: ``networks``, ``network``)."""

import networks
from modules import extra_networks, script_callbacks


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    """extra_networks_lora.py: ``<lora:name:te[:unet]>`` and ``te=``/``unet=`` named arguments."""

    def __init__(self):
        super().__init__("lora")

    def activate(self, p, params_list):
        names, te, unet = [], [], []
        for params in params_list:
            names.append(params.positional[0])
            te_multiplier = float(params.positional[1]) if len(params.positional) > 1 else 1.0
            te_multiplier = float(params.named.get("te", te_multiplier))
            unet_multiplier = float(params.positional[2]) if len(params.positional) > 2 else te_multiplier
            unet.append(float(params.named.get("unet", unet_multiplier)))
            te.append(te_multiplier)
        networks.load_networks(names, te, unet, [None] * len(names))

    def deactivate(self, p):
        pass


def unload():
    networks.originals.undo()


networks.originals = networks.LoraPatches()
networks.extra_network_lora = ExtraNetworkLora()
extra_networks.register_extra_network(networks.extra_network_lora)
extra_networks.register_extra_network_alias(networks.extra_network_lora, "lyco")
script_callbacks.on_model_loaded(networks.assign_network_names_to_compvis_modules)
