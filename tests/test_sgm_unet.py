"""The WebUI's SDXL class: sgm's ``UNetModel`` (its stand-in, tests/webui_stub/sgm) through describe,
the export's attention swap, the export and every recipe.

What sgm's UNet has and the diffusers model behind ``tiny-sdxl`` lacks: ``label_emb`` on ``y`` as
Sequential(Sequential(Linear, SiLU, Linear)) of the real widths (2816 base, 2560 refiner), SpatialTransformers
with linear projections and einops' token layout, a transformer depth per level and in the middle, the
refiner's four levels and 1280-wide context, and sgm's own attention classes, which the WebUI replaces
with its attention optimization and which call their attention with extra keyword arguments.
"""

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from conftest import ROOT
from lib_ort.attention import sdpa_attention
from lib_ort.bench.architectures import example_inputs
from lib_ort.describe import Family, describe_unet, state_dict_digest
from lib_ort.export import MODEL_FILE, load_export_info
from lib_ort.graph import initializer_types, io_types, op_counts
from lib_ort.pipeline import ensure_export, prepare
from lib_ort.unet import OrtUnet
from sgm_unets import CONFIGS, attention_layers, build_sgm_unet
from test_export import _feed
from test_recipes import _time_embedding_types

TINY_SGM = ("tiny-sgm-sdxl", "tiny-sgm-refiner")
SHAPES = [(1, 8, 8, 77), (2, 16, 8, 154), (3, 8, 24, 77)]  # (B, latent H, latent W, S): multiples of 8 for the refiner

_models: dict[str, nn.Module] = {}


def sgm_model(name: str) -> nn.Module:
    if name not in _models:
        _models[name] = build_sgm_unet(name)
    return _models[name]


def _checkpoint(name):
    return {"hash": state_dict_digest(sgm_model(name)), "name": name}


@pytest.fixture(scope="module")
def sgm_export(shared_registry):
    def get(name):
        folder, _ = ensure_export(sgm_model(name), shared_registry, _checkpoint(name))
        return folder

    return get


@pytest.fixture(scope="module")
def sgm_artefact(shared_registry):
    def get(name, ep):
        return prepare(sgm_model(name), shared_registry, _checkpoint(name), ep).artefact

    return get


def assert_parity(name, run):
    """``run(inputs)`` (ONNX Runtime) against the torch model at several shapes, dynamic batch, size and length."""
    model = sgm_model(name)
    for b, h, w, s in SHAPES:
        inputs = example_inputs(model, b, h, w, s, seed=b)
        with torch.no_grad():
            ref = model(**inputs)
        rel = float((run(inputs) - ref).abs().max() / ref.abs().max())
        assert rel <= 1e-4, (name, (b, h, w, s), rel)


def layers(model):
    return {
        "attention": sum(attention_layers(model).values()),
        "transformer_blocks": attention_layers(model)["self"],
        "group_norm": sum(isinstance(m, nn.GroupNorm) for m in model.modules()),
        "conv": sum(isinstance(m, nn.Conv2d) for m in model.modules()),
        "layer_norm": sum(isinstance(m, nn.LayerNorm) for m in model.modules()),
    }


def test_the_stand_in_is_sgm_by_module_path_and_class():
    from sgm.modules import attention
    from sgm.modules.diffusionmodules.openaimodel import UNetModel

    assert attention.__file__.startswith(str(ROOT / "tests" / "webui_stub" / "sgm"))
    model = sgm_model("tiny-sgm-sdxl")
    assert type(model) is UNetModel
    names = {type(m).__name__ for m in model.modules()}
    assert {"SpatialTransformer", "BasicTransformerBlock", "CrossAttention"} <= names
    assert type(model.label_emb[0][0]) is nn.Linear and model.label_emb[0][0].in_features == 2816
    assert all(isinstance(m.proj_in, nn.Linear) for m in model.modules() if type(m).__name__ == "SpatialTransformer")
    # transformer depth per level: none at the first level, 1 at the second, 2 at the third and in the middle
    depths = [len(m.transformer_blocks) for m in model.input_blocks.modules() if hasattr(m, "transformer_blocks")]
    assert depths == [1, 2] and len(model.middle_block[1].transformer_blocks) == 2


@pytest.mark.parametrize("name, family, context, adm, multiple, parameters", [
    ("sdxl-base", Family.SDXL, 2048, 2816, 4, 2_567_463_684),  # SDXL 1.0's UNet, counted in sgm's layout
    ("sdxl-refiner", Family.SDXL_REFINER, 1280, 2560, 8, 2_259_526_660),
])
def test_full_size_sgm_configs_are_described(name, family, context, adm, multiple, parameters):
    d = describe_unet(build_sgm_unet(name, device="meta"))
    assert d.family is family
    assert (d.io.in_channels, d.io.out_channels, d.io.context_dim, d.io.adm_dim) == (4, 4, context, adm)
    assert d.io.spatial_multiple == multiple and d.parameters == parameters
    assert d.label == ("SDXL" if family is Family.SDXL else "SDXL refiner")


@pytest.mark.parametrize("name, family, context, adm, multiple", [
    ("tiny-sgm-sdxl", Family.SDXL, 64, 2816, 4),
    ("tiny-sgm-refiner", Family.SDXL_REFINER, 1280, 2560, 8),
])
def test_tiny_sgm_models_are_described(name, family, context, adm, multiple):
    d = describe_unet(sgm_model(name))
    assert (d.family, d.io.context_dim, d.io.adm_dim, d.io.spatial_multiple) == (family, context, adm, multiple)


# -- attention ------------------------------------------------------------------------------------


def _webui_like_forward(calls):
    """What the WebUI's sd_hijack_optimizations installs on sgm's CrossAttention (an einsum attention here)."""

    def forward(self, x, context=None, mask=None, **kwargs):
        calls.append(type(self).__name__)
        context = x if context is None else context
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        weights = torch.einsum("bhid,bhjd->bhij", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
        return self.to_out(torch.einsum("bhij,bhjd->bhid", weights, v).transpose(1, 2).flatten(2))

    return forward


def test_export_replaces_the_webuis_attention_on_sgm_classes_and_puts_it_back(tmp_path):
    from lib_ort.export import export_model
    from lib_ort.parts.unet import UNET
    from sgm.modules.attention import CrossAttention

    calls = []
    saved = CrossAttention.__dict__["forward"]
    CrossAttention.forward = webui = _webui_like_forward(calls)
    try:
        model = sgm_model("tiny-sgm-sdxl")
        inputs = example_inputs(model, 2, 8, 8, 77)
        with torch.no_grad():
            ref = model(**inputs)
        assert calls, "the WebUI's forward runs the PyTorch UNet"
        calls.clear()
        result = export_model(UNET, model, tmp_path / "export")
        assert calls == []  # traced through SDPA, not through the WebUI's einsum attention
        assert CrossAttention.forward is webui  # the WebUI's choice is back
        session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
        out = torch.from_numpy(session.run(None, _feed(inputs))[0])
        assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-4
    finally:
        CrossAttention.forward = saved


def test_sdpa_forward_takes_sgm_attention_calls_with_their_extra_arguments():
    """sgm's BasicTransformerBlock passes additional_tokens / n_times_crossframe_attn_in_self to its attention."""
    model = sgm_model("tiny-sgm-refiner")
    inputs = example_inputs(model, 2, 8, 16, 154)
    with torch.no_grad():
        ref = model(**inputs)
        with sdpa_attention(model) as patched:
            out = model(**inputs)
    assert patched == 1  # CrossAttention
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


def test_sdpa_covers_sgms_xformers_attention_class(monkeypatch):
    """With xformers, sgm builds MemoryEfficientCrossAttention; the export's SDPA swap covers it too."""
    from sgm.modules import attention

    monkeypatch.setattr(attention, "XFORMERS_IS_AVAILABLE", True)
    model = build_sgm_unet("tiny-sgm-sdxl")
    classes = {type(m) for m in model.modules() if type(m).__name__.endswith("Attention")}
    assert classes == {attention.MemoryEfficientCrossAttention}
    original = attention.MemoryEfficientCrossAttention.forward
    inputs = example_inputs(model, 2, 8, 8, 77)
    with torch.no_grad():
        ref = model(**inputs)
        with sdpa_attention(model) as patched:
            assert patched == 1 and attention.MemoryEfficientCrossAttention.forward is not original
            out = model(**inputs)
    assert attention.MemoryEfficientCrossAttention.forward is original
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


# -- export ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_SGM)
def test_sgm_export_takes_y_with_dynamic_axes_and_matches_torch(name, sgm_export):
    model = sgm_model(name)
    folder = sgm_export(name)
    graph = onnx.load(str(folder / MODEL_FILE), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["sample", "timestep", "encoder_hidden_states", "y"]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["y"] == ["B", CONFIGS[name]["adm_in_channels"]]
    assert dims["sample"] == ["B", 4, "H", "W"] and dims["encoder_hidden_states"][:2] == ["B", "S"]
    assert set(io_types(folder / MODEL_FILE).values()) == {"FLOAT"}
    info = load_export_info(folder)
    assert info["io"]["adm_dim"] == CONFIGS[name]["adm_in_channels"]
    assert info["family"] == describe_unet(model).family.value
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    assert_parity(name, lambda inputs: torch.from_numpy(session.run(None, _feed(inputs))[0]))
    # y is an input of the graph, not a constant the trace baked in
    inputs = example_inputs(model, 2, 8, 8, 77, seed=5)
    changed = dict(inputs, y=inputs["y"] + 1.0)
    a, b = (session.run(None, _feed(i))[0] for i in (inputs, changed))
    assert abs(a - b).max() > 1e-3


# -- recipes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_SGM)
def test_cpu_recipe_fuses_every_sgm_attention_layer_and_keeps_parity(name, sgm_artefact):
    artefact = sgm_artefact(name, "cpu")
    model = sgm_model(name)
    n = layers(model)
    ops = artefact.manifest["fused_ops"]
    assert ops.get("Attention", 0) + ops.get("MultiHeadAttention", 0) == n["attention"]  # self + cross
    assert ops.get("Attention", 0) >= 1 and ops.get("MultiHeadAttention", 0) >= 1
    assert ops.get("LayerNormalization", 0) + ops.get("SkipLayerNormalization", 0) == n["layer_norm"]
    for no_cpu_kernel in ("GroupNorm", "SkipGroupNorm", "NhwcConv", "BiasSplitGelu", "BiasAdd"):
        assert no_cpu_kernel not in ops
    assert set(artefact.manifest["io_types"].values()) == {"FLOAT"}
    assert artefact.manifest["io"]["adm_dim"] == CONFIGS[name]["adm_in_channels"]
    unet = OrtUnet(artefact)
    assert_parity(name, lambda inputs: unet(inputs["x"], inputs["timesteps"], inputs["context"], y=inputs["y"]))


def test_cuda_recipe_fuses_every_unet_pattern_of_sgm_into_fp16_with_an_fp32_time_embedding(sgm_artefact):
    artefact = sgm_artefact("tiny-sgm-sdxl", "cuda")
    ops = op_counts(artefact.model_path)
    n = layers(sgm_model("tiny-sgm-sdxl"))
    assert ops.get("MultiHeadAttention") == n["attention"]
    assert ops.get("Attention", 0) == 0 and ops.get("Softmax", 0) == 0
    assert ops.get("GroupNorm", 0) + ops.get("SkipGroupNorm", 0) == n["group_norm"]
    assert ops.get("NhwcConv") == n["conv"]
    assert ops.get("BiasSplitGelu") == n["transformer_blocks"]
    assert ops.get("BiasAdd", 0) >= 1 and ops.get("SkipLayerNormalization", 0) >= 1
    types = dict(artefact.manifest["io_types"])
    assert types.pop("timestep") == "FLOAT" and types == {"sample": "FLOAT16", "encoder_hidden_states": "FLOAT16",
                                                          "y": "FLOAT16", "latent": "FLOAT16"}
    inits = initializer_types(artefact.model_path)
    assert inits.get("FLOAT16", 0) > inits.get("FLOAT", 0)
    model = onnx.load(str(artefact.model_path), load_external_data=False)
    sincos, consts, inputs, _ = _time_embedding_types(model)
    assert sincos == {"Sin": "FLOAT", "Cos": "FLOAT"} and "FLOAT16" not in consts
    assert inputs == ["timestep"]  # y's embedding is not on the fp32 path: it joins after the Cast


def test_dml_recipe_on_sgm_uses_only_directml_safe_fusions(sgm_artefact):
    artefact = sgm_artefact("tiny-sgm-sdxl", "dml")
    ops = op_counts(artefact.model_path)
    n = layers(sgm_model("tiny-sgm-sdxl"))
    assert ops.get("MultiHeadAttention") == n["attention"]
    assert ops.get("GroupNorm") == n["group_norm"]
    for unsafe in ("NhwcConv", "BiasSplitGelu", "BiasAdd", "SkipGroupNorm", "SkipLayerNormalization"):
        assert unsafe not in ops
    assert set(artefact.manifest["io_types"].values()) == {"FLOAT16"}
    assert set(io_types(artefact.model_path)) == {"sample", "timestep", "encoder_hidden_states", "y", "latent"}


def test_tensorrt_recipe_on_sgm_is_a_clean_fp32_graph_with_y(sgm_artefact):
    artefact = sgm_artefact("tiny-sgm-sdxl", "tensorrt")
    model = onnx.load(str(artefact.model_path), load_external_data=False)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert op_counts(model).get("InstanceNormalization") == layers(sgm_model("tiny-sgm-sdxl"))["group_norm"]
    assert artefact.manifest["io_types"] == {"sample": "FLOAT", "timestep": "FLOAT", "encoder_hidden_states": "FLOAT",
                                             "y": "FLOAT", "latent": "FLOAT"}
    assert initializer_types(model).get("FLOAT16", 0) == 0
