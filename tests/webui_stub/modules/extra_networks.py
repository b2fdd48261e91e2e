"""Stand-in of modules/extra_networks.py: the registry of extra network kinds and ``activate``, which
``process_images_inner`` calls before each batch's ``process_batch`` hooks (v1.10.1)."""

extra_network_registry = {}
extra_network_aliases = {}


class ExtraNetworkParams:
    """``<lora:name:0.8:unet=0.5>`` -> items ["name", "0.8", "unet=0.5"], positional and named split."""

    def __init__(self, items=None):
        self.items = items or []
        self.positional = []
        self.named = {}
        for item in self.items:
            parts = str(item).split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)


class ExtraNetwork:
    def __init__(self, name):
        self.name = name

    def activate(self, p, params_list):
        raise NotImplementedError

    def deactivate(self, p):
        raise NotImplementedError


def register_extra_network(extra_network):
    extra_network_registry[extra_network.name] = extra_network


def register_extra_network_alias(extra_network, alias):
    extra_network_aliases[alias] = extra_network


def activate(p, extra_network_data):
    """Every registered kind is activated, with an empty list when the prompt does not name it (so a
    kind un-loads what the previous job loaded); a kind the prompt names that nobody registered is skipped."""
    activated = set()
    for name, params_list in extra_network_data.items():
        network = extra_network_registry.get(name) or extra_network_aliases.get(name)
        if network is None or network in activated or not all(isinstance(x, ExtraNetworkParams) for x in params_list):
            continue
        network.activate(p, params_list)
        activated.add(network)
    for network in extra_network_registry.values():
        if network not in activated:
            network.activate(p, [])


def deactivate(p, extra_network_data):
    for network in extra_network_registry.values():
        network.deactivate(p)
