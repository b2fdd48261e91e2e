"""Lora networks (LoRA and the LyCORIS kinds) on the ONNX UNet, against the PyTorch UNet with the same
networks, through the stand-in of the WebUI's built-in Lora extension (tests/webui_stub/extensions-builtin/Lora),
loaded as the WebUI loads it. Network files are small random safetensors made here, with the key names the
extension reads, for the tiny SD2 model's layers as the WebUI names them."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from safetensors.torch import save_file

from conftest import REPO, StubSdModel, script_runner
from modules import extra_networks, sd_unet, shared
from modules.extra_networks import ExtraNetworkParams
from modules.processing import StableDiffusionProcessing, run_job
from modules.sd_models import CheckpointInfo

from lib_ort.describe import state_dict_digest
from lib_ort.webui.unet import LABEL
from lib_ort.weight_map import MAP_FILE

EXTENSION = REPO / "tests" / "webui_stub" / "extensions-builtin" / "Lora"

BLOCK = "input_blocks_1_1"
LINEAR = f"{BLOCK}_transformer_blocks_0_attn1_to_q"  # no bias
LINEAR_WITH_BIAS = f"{BLOCK}_transformer_blocks_0_attn1_to_out_0"
CROSS = f"{BLOCK}_transformer_blocks_0_attn2_to_k"  # 96 inputs: the text's width
FF = "middle_block_1_transformer_blocks_0_ff_net_2"
CONV = "input_blocks_1_0_in_layers_2"
GROUPNORM = "input_blocks_1_0_in_layers_0"
LAYERNORM = f"{BLOCK}_transformer_blocks_0_norm1"


class LoraSdModel(StubSdModel):
    """The tiny SD2 model with every weight nudged (a fresh model's norms are all ones and zeros, which
    no trained checkpoint has and which the weight map rightly calls ambiguous), under a
    ``DiffusionWrapper``-like module, as the Lora extension walks ``sd_model.model.named_modules()``."""

    def __init__(self, filename="models/Stable-diffusion/turbo/tiny-sd2-lora.safetensors", seed=11):
        super().__init__("tiny-sd2", filename)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.unet.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        wrapper = torch.nn.Module()
        wrapper.diffusion_model = self.unet
        self.model = wrapper
        self.sd_checkpoint_info = CheckpointInfo(self.sd_checkpoint_info.filename, state_dict_digest(self.unet))


@pytest.fixture(scope="module")
def lora_model(extension):
    return LoraSdModel()


@pytest.fixture(scope="module")
def lora_exported(extension, lora_model):
    from lib_ort.webui import service

    saved = shared.sd_model
    shared.sd_model = lora_model
    try:
        return service.export_loaded_checkpoint("cpu")
    finally:
        shared.sd_model = saved


@pytest.fixture(scope="module")
def networks(extension, lora_model):
    """The Lora extension loaded as the WebUI loads a script: its folder first on sys.path while the
    script is imported, so its modules land in sys.modules as ``networks`` and ``network``."""
    saved_path = list(sys.path)
    sys.path.insert(0, str(EXTENSION))
    try:
        spec = importlib.util.spec_from_file_location("lora_script", EXTENSION / "scripts" / "lora_script.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
    finally:
        sys.path[:] = saved_path
    module = sys.modules["networks"]
    module.assign_network_names_to_compvis_modules(lora_model)  # the WebUI's model-loaded callback
    yield module
    script.unload()
    from modules import script_callbacks

    loaded = script_callbacks.callbacks["model_loaded"]  # the script's callback must not outlive this module
    loaded[:] = [fn for fn in loaded if fn is not module.assign_network_names_to_compvis_modules]
    extra_networks.extra_network_registry.pop("lora", None)
    extra_networks.extra_network_aliases.pop("lyco", None)
    for name in ("networks", "network"):
        sys.modules.pop(name, None)


@pytest.fixture()
def webui(fresh_webui, lora_model, lora_exported, networks):
    shared.sd_model = lora_model
    networks.loaded_networks.clear()
    yield networks
    networks.loaded_networks.clear()


# -- network files --------------------------------------------------------------------------------


def _t(g, *shape, scale=0.3):
    return torch.randn(*shape, generator=g) * scale


def _module(model, layer):
    return model.network_layer_mapping[f"diffusion_model_{layer}"]


def network_tensors(kind: str, model, seed: int) -> dict:
    """``<layer>.<part>`` tensors of one network kind, for layers of the tiny model."""
    g = torch.Generator().manual_seed(seed)
    out = {}

    def put(layer, **parts):
        out.update({f"lora_unet_{layer}.{k}": v.contiguous() for k, v in parts.items()})

    if kind == "lora":
        for layer in (LINEAR, CROSS, FF):
            o, i = _module(model, layer).weight.shape
            put(layer, **{"lora_up.weight": _t(g, o, 4), "lora_down.weight": _t(g, 4, i), "alpha": torch.tensor(2.0)})
        o, i, kh, kw = _module(model, CONV).weight.shape
        put(CONV, **{"lora_up.weight": _t(g, o, 4, 1, 1), "lora_down.weight": _t(g, 4, i, kh, kw, scale=0.1),
                     "alpha": torch.tensor(4.0)})
    elif kind == "loha":
        for layer in (LINEAR, CONV):
            shape = _module(model, layer).weight.shape
            rest = int(torch.tensor(shape[1:]).prod())
            put(layer, hada_w1_a=_t(g, shape[0], 2), hada_w1_b=_t(g, 2, rest), hada_w2_a=_t(g, shape[0], 2),
                hada_w2_b=_t(g, 2, rest), alpha=torch.tensor(2.0))
    elif kind == "lokr":
        o, i = _module(model, CROSS).weight.shape
        put(CROSS, lokr_w1=_t(g, 4, 4), lokr_w2_a=_t(g, o // 4, 2), lokr_w2_b=_t(g, 2, i // 4), alpha=torch.tensor(2.0))
        o, i = _module(model, FF).weight.shape
        put(FF, lokr_w1=_t(g, 2, 2), lokr_w2=_t(g, o // 2, i // 2, scale=0.05))
    elif kind == "ia3":
        for layer in (LINEAR, FF):
            o, i = _module(model, layer).weight.shape
            put(layer, weight=_t(g, o), on_input=torch.tensor(False))
    elif kind in ("full", "full-bias"):
        for layer in (LINEAR, LINEAR_WITH_BIAS):
            o, i = _module(model, layer).weight.shape
            parts = {"diff": _t(g, o, i, scale=0.1)}
            if layer == LINEAR_WITH_BIAS and kind == "full-bias":
                parts["diff_b"] = _t(g, o, scale=0.1)
            put(layer, **parts)
    elif kind == "norm":
        for layer in (GROUPNORM, LAYERNORM):
            (c,) = _module(model, layer).weight.shape
            put(layer, w_norm=_t(g, c), b_norm=_t(g, c))
    elif kind == "glora":
        o, i = _module(model, LINEAR).weight.shape
        put(LINEAR, **{"a1.weight": _t(g, 2, i), "a2.weight": _t(g, i, 2), "b1.weight": _t(g, 2, i),
                       "b2.weight": _t(g, o, 2), "alpha": torch.tensor(2.0)})
    elif kind == "oft":
        o, _ = _module(model, LINEAR_WITH_BIAS).weight.shape
        put(LINEAR_WITH_BIAS, oft_blocks=_t(g, 4, o // 4, o // 4), alpha=torch.tensor(0.5))
    else:
        raise ValueError(kind)
    return out


def make_network(tmp_path, networks, model, name: str, kind: str, seed: int = 0, tensors: dict | None = None):
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors or network_tensors(kind, model, seed), str(path))
    networks.available_networks[name] = str(path)
    networks.networks_in_memory.pop(name, None)
    return name


def prompt(*entries) -> dict:
    """``extra_network_data`` for ``<lora:name:weight>`` entries given as (name, weight) pairs."""
    return {"lora": [ExtraNetworkParams(items=[name, str(weight)]) for name, weight in entries]} if entries else {}


def pixels(images):
    return ((torch.stack(images).detach().float() + 1) / 2).clamp(0, 1) * 255


def generate(extension, unet: str, networks_data: dict, seed=3, init_latent=None, **kwargs):
    shared.opts.data["sd_unet"] = unet
    p = StableDiffusionProcessing(script_runner(extension), batch_size=1, steps=2, cfg_scale=1.0, seed=seed,
                                  extra_network_data=networks_data, **kwargs)
    p.init_latent = init_latent  # img2img: the init image's latent (the tiny model's VAE cannot encode)
    return run_job(p)


def max_diff(a, b) -> float:
    return float((pixels(a.images) - pixels(b.images)).abs().max())


def assert_on_ort(processed):
    assert "ORT Turbo: " in processed.infotexts[0]
    assert "fallback" not in processed.infotexts[0] and "partly PyTorch" not in processed.infotexts[0], processed.infotexts[0]


# -- parity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr", "ia3", "full", "glora", "oft"])
def test_each_network_kind_on_ort_matches_pytorch(webui, extension, lora_model, tmp_path, kind):
    name = make_network(tmp_path, webui, lora_model, f"net-{kind}", kind)
    base = generate(extension, "None", {})
    reference = generate(extension, "None", prompt((name, 0.8)))
    assert max_diff(reference, base) > 2, "the network must change the image, or this test proves nothing"
    ours = generate(extension, LABEL, prompt((name, 0.8)))
    assert_on_ort(ours)
    assert max_diff(ours, reference) <= 2


def replaces_inline_weights(runner) -> bool:
    """Whether this onnxruntime takes a replacement (``add_external_initializers``) for a weight stored inside
    the model file: ORT 1.26, the WebUI's, refuses; the session goes back to the artefact's own weights."""
    from lib_ort.errors import OrtTurboError
    from lib_ort.onnx_weights import Weights

    weights = Weights(runner.artefact.model_path)
    inline = next(n for n in weights.names() if weights.entries[n].external is None)
    try:
        runner.replace_weights({inline: weights.array(inline).copy()})
        return True
    except OrtTurboError:
        return False
    finally:
        runner.replace_weights({})


@pytest.mark.parametrize("kind", ["full-bias", "norm"])
def test_network_kinds_changing_small_weights_run_on_ort_or_fall_back_with_the_reason(webui, extension, lora_model,
                                                                                     tmp_path, kind):
    """A bias (full-bias) or a norm's scale and shift (norm): the tiny artefact keeps these under 1 KB inside
    model.onnx (a full-size one only the last convolution's bias). Where ORT takes them the image is ORT's and
    matches; where it refuses, the documented fallback says so, the image is PyTorch's with the network, and
    the next job without networks is ORT's again, on the artefact's own weights."""
    name = make_network(tmp_path, webui, lora_model, f"net-{kind}", kind)
    base = generate(extension, "None", {})
    reference = generate(extension, "None", prompt((name, 0.8)))
    assert max_diff(reference, base) > 2, "the network must change the image, or this test proves nothing"
    assert_on_ort(generate(extension, LABEL, {}))
    takes_inline = replaces_inline_weights(sd_unet.current_unet.ort)
    ours = generate(extension, LABEL, prompt((name, 0.8)))
    if takes_inline:
        assert_on_ort(ours)
    else:
        assert "PyTorch fallback: ONNX Runtime could not take the network weights" in ours.infotexts[0]
        assert "stored inside the model file" in ours.infotexts[0]
    assert max_diff(ours, reference) <= 2
    again = generate(extension, LABEL, {})
    assert_on_ort(again)
    assert max_diff(again, base) <= 2


def test_several_networks_weights_and_switching_back(webui, extension, lora_model, tmp_path):
    a = make_network(tmp_path, webui, lora_model, "style-a", "lora", seed=1)
    b = make_network(tmp_path, webui, lora_model, "style-b", "loha", seed=2)
    c = make_network(tmp_path, webui, lora_model, "style-c", "lokr", seed=3)
    sets = [((a, 1.0), (b, 0.5), (c, 0.7)), ((a, 0.3),), ((a, 0.3),), ((b, -0.6), (a, 1.2)), ()]
    references = [generate(extension, "None", prompt(*s)) for s in sets]
    sd_unet.apply_unet("None")
    for entries, reference in zip(sets, references):
        ours = generate(extension, LABEL, prompt(*entries))
        assert_on_ort(ours)
        assert max_diff(ours, reference) <= 2, entries
    assert max_diff(references[1], references[3]) > 2  # the weights matter


@pytest.mark.parametrize("mode", ["hires", "img2img"])
def test_hires_fix_and_img2img_with_networks_match_pytorch(webui, extension, lora_model, tmp_path, mode):
    """Hires fix: a second pass on a 2x latent in the same batch, networks activated again; img2img: the
    last part of the schedule from a noised init latent. Both with networks on the ONNX UNet."""
    a = make_network(tmp_path, webui, lora_model, f"{mode}-a", "lora", seed=8)
    b = make_network(tmp_path, webui, lora_model, f"{mode}-b", "loha", seed=9)
    networks_data = prompt((a, 0.8), (b, 0.5))
    if mode == "hires":
        kwargs = {"enable_hr": True, "denoising_strength": 0.5}
    else:
        init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(12))
        kwargs = {"init_images": [object()], "init_latent": init, "denoising_strength": 0.5}
    shared.opts.data["img2img_fix_steps"] = True  # the same schedule for both UNets (ORT's job would set it)
    try:
        base = generate(extension, "None", {}, **kwargs)
        reference = generate(extension, "None", networks_data, **kwargs)
        ours = generate(extension, LABEL, networks_data, **kwargs)
    finally:
        shared.opts.data.pop("img2img_fix_steps")
    if mode == "hires":
        # the 64 px job's 8x8 latent, upscaled 2x for the second pass (the stand-in VAE keeps the latent's size)
        assert reference.images[0].shape[-1] == ours.images[0].shape[-1] == 16
    assert max_diff(reference, base) > 2, "the networks must change the image, or this test proves nothing"
    assert_on_ort(ours)
    assert max_diff(ours, reference) <= 2


def test_the_same_set_again_does_not_rebuild_the_session(webui, extension, lora_model, tmp_path):
    name = make_network(tmp_path, webui, lora_model, "again", "lora", seed=4)
    generate(extension, LABEL, prompt((name, 0.5)))
    unet = sd_unet.current_unet
    session = unet.ort.session
    generate(extension, LABEL, prompt((name, 0.5)))
    assert unet.ort.session is session
    generate(extension, LABEL, {})
    assert unet.ort.session is not session and unet.ort.replaced == {}


def test_an_export_after_a_lora_job_traces_the_checkpoints_own_weights(webui, extension, tmp_path):
    """The Lora extension puts a module's own weights back lazily, at its next forward: after a PyTorch job
    with a LoRA the UNet still holds the LoRA'd weights and ``loaded_networks`` still names the LoRA, so a
    trace would see them. The export must carry the checkpoint's own weights: its image without networks
    is PyTorch's without networks, and the LoRA on top of it is the LoRA's image."""
    from lib_ort.webui import service

    model = LoraSdModel("models/Stable-diffusion/turbo/tiny-sd2-lora-export.safetensors", seed=21)
    webui.assign_network_names_to_compvis_modules(model)
    shared.sd_model = model  # a checkpoint with no export yet
    name = make_network(tmp_path, webui, model, "before-export", "lora", seed=22)
    o, i = _module(model, LINEAR).weight.shape  # and one that adds a bias the layer does not have
    tensors = {f"lora_unet_{LINEAR}.diff": torch.zeros(o, i), f"lora_unet_{LINEAR}.diff_b": torch.full((o,), 0.1)}
    bias = make_network(tmp_path, webui, model, "adds-bias", "full", tensors=tensors)
    plain = generate(extension, "None", {})
    with_lora = generate(extension, "None", prompt((name, 1.0)))
    assert max_diff(plain, with_lora) > 2, "the network must change the image, or this test proves nothing"
    generate(extension, "None", prompt((name, 1.0), (bias, 1.0)))  # what the UNet holds when the export starts
    still = [m for m in model.unet.modules() if getattr(m, "network_current_names", ())]
    assert still and webui.loaded_networks, "the networks' weights must still be in the UNet when the export starts"
    assert _module(model, LINEAR).bias is not None
    manifest = service.export_loaded_checkpoint("cpu")
    assert _module(model, LINEAR).bias is not None  # the extension's state is as it left it
    try:
        ours = generate(extension, LABEL, {})
        assert_on_ort(ours)
        assert manifest["id"] in ours.infotexts[0]
        assert max_diff(ours, plain) <= 2
        ours_lora = generate(extension, LABEL, prompt((name, 1.0)))
        assert_on_ort(ours_lora)
        assert max_diff(ours_lora, with_lora) <= 2
    finally:
        sd_unet.apply_unet("None")
        service.delete_artefact(manifest["id"])


def test_the_weight_map_is_saved_beside_the_artefact(webui, extension, lora_model, lora_exported, tmp_path):
    from lib_ort.webui import service

    name = make_network(tmp_path, webui, lora_model, "mapped", "lora", seed=5)
    generate(extension, LABEL, prompt((name, 1.0)))
    folder = service.registry().root / lora_exported["id"]
    assert (folder / MAP_FILE).is_file()


# -- what falls back --------------------------------------------------------------------------------


def test_a_network_adding_a_bias_the_graph_lacks_falls_back_with_the_reason(webui, extension, lora_model, tmp_path):
    o, i = _module(lora_model, LINEAR).weight.shape
    tensors = {f"lora_unet_{LINEAR}.diff": torch.zeros(o, i), f"lora_unet_{LINEAR}.diff_b": torch.full((o,), 0.1)}
    name = make_network(tmp_path, webui, lora_model, "new-bias", "full", tensors=tensors)
    processed = generate(extension, LABEL, prompt((name, 1.0)))
    assert "PyTorch fallback: a network changes input_blocks.1.1.transformer_blocks.0.attn1.to_q.bias" in processed.infotexts[0]
    # the next job without it runs on ORT again, with the PyTorch UNet's own weights
    reference = generate(extension, "None", {})
    ours = generate(extension, LABEL, {})
    assert_on_ort(ours)
    assert max_diff(ours, reference) <= 2


def test_a_runner_that_lost_its_session_binds_again(webui, extension, lora_model, tmp_path, monkeypatch):
    """Replacing the weights fails and so does going back to the artefact's own (ORT out of memory, say): the
    runner has no session. That batch falls back with the reason; the next one makes a new session instead of
    falling back until the checkpoint, the provider or a setting changes."""
    from lib_ort.unet import OrtUnet

    name = make_network(tmp_path, webui, lora_model, "lost", "lora", seed=13)
    reference = generate(extension, "None", {})
    assert_on_ort(generate(extension, LABEL, {}))

    def fails(self, initializers):
        self.release()
        raise RuntimeError("not enough memory, on purpose")

    with monkeypatch.context() as patch:
        patch.setattr(OrtUnet, "replace_weights", fails)
        lost = generate(extension, LABEL, prompt((name, 1.0)))
    assert "PyTorch fallback: ONNX Runtime could not take the network weights (RuntimeError: not enough memory" \
        in lost.infotexts[0]
    assert sd_unet.current_unet.ort.session is None
    ours = generate(extension, LABEL, {})
    assert_on_ort(ours)
    assert max_diff(ours, reference) <= 2


def test_functional_lora_falls_back(webui, extension, lora_model, tmp_path):
    name = make_network(tmp_path, webui, lora_model, "functional", "lora", seed=6)
    shared.opts.data["lora_functional"] = True
    try:
        processed = generate(extension, LABEL, prompt((name, 1.0)))
    finally:
        shared.opts.data.pop("lora_functional")
    assert "PyTorch fallback: Lora networks applied on the fly" in processed.infotexts[0]


def test_hypernetwork_still_falls_back(webui, extension):
    processed = generate(extension, LABEL, {"hypernet": [ExtraNetworkParams(items=["hn", "1"])]})
    assert "PyTorch fallback: hypernetworks patch the PyTorch UNet's attention" in processed.infotexts[0]


def test_an_error_in_the_extension_falls_back(webui, extension, lora_model, tmp_path, monkeypatch):
    name = make_network(tmp_path, webui, lora_model, "broken", "lora", seed=7)

    original, calls = webui.network_apply_weights, []

    def broken(module):  # fails once (for ORT's call), then works (for the PyTorch fallback)
        calls.append(module)
        if len(calls) == 1:
            raise RuntimeError("broken on purpose")
        return original(module)

    monkeypatch.setattr(webui, "network_apply_weights", broken)
    processed = generate(extension, LABEL, prompt((name, 1.0)))
    assert "PyTorch fallback: the Lora extension could not apply the networks for ORT" in processed.infotexts[0]
