"""Each provider's Olive recipe, run for real in the optimization child process.

The CPU recipe is checked numerically; the CUDA, DirectML and TensorRT recipes (whose ops have no
CPU kernels) by graph structure: fused op counts against the torch model's own layers, and dtypes.
"""

import pytest
import torch
from torch import nn

from conftest import TINY, tiny_model
from lib_ort.bench.architectures import example_inputs
from lib_ort.errors import OrtTurboError
from lib_ort.graph import initializer_types, op_counts
from lib_ort.recipes import RECIPES, get_recipe, olive_config
from lib_ort.unet import OrtUnet


def layers(name):
    model = tiny_model(name)
    attention = sum(1 for n, m in model.named_modules() if n.endswith(("attn1", "attn2")))
    return {
        "attention": attention,
        "group_norm": sum(isinstance(m, nn.GroupNorm) for m in model.modules()),
        "conv": sum(isinstance(m, nn.Conv2d) for m in model.modules()),
        "transformer_blocks": sum(1 for n, m in model.named_modules() if n.endswith("ff")),
        "layer_norm": sum(isinstance(m, nn.LayerNorm) for m in model.modules()),
    }


@pytest.mark.parametrize("name", TINY)
def test_cpu_recipe_keeps_parity_and_fuses_what_cpu_can_run(name, artefact_of):
    artefact = artefact_of(name, "cpu")
    ops = artefact.manifest["fused_ops"]
    n = layers(name)
    # self-attention gets fused QKV weights (Attention), cross-attention stays MultiHeadAttention
    assert ops.get("Attention", 0) + ops.get("MultiHeadAttention", 0) == n["attention"]
    assert ops.get("Attention", 0) >= 1 and ops.get("MultiHeadAttention", 0) >= 1
    assert ops.get("LayerNormalization", 0) + ops.get("SkipLayerNormalization", 0) == n["layer_norm"]
    for no_cpu_kernel in ("GroupNorm", "SkipGroupNorm", "NhwcConv", "BiasSplitGelu", "BiasAdd"):
        assert no_cpu_kernel not in ops
    assert set(artefact.manifest["io_types"].values()) == {"FLOAT"}
    assert artefact.manifest["recipe"] == RECIPES["cpu"]

    model = tiny_model(name)
    unet = OrtUnet(artefact)
    for b, h, w, s in [(1, 8, 8, 77), (2, 12, 8, 154), (3, 8, 16, 77)]:
        inputs = example_inputs(model, b, h, w, s, seed=b)
        with torch.no_grad():
            ref = model(**inputs)
        out = unet(inputs["x"], inputs["timesteps"], inputs["context"], y=inputs.get("y"))
        rel = (out - ref).abs().max() / ref.abs().max()
        assert rel <= 1e-4, (name, (b, h, w, s), float(rel))


def test_cpu_artefact_takes_fp16_and_gives_fp16(artefact_of):
    model = tiny_model("tiny-sd2")
    unet = OrtUnet(artefact_of("tiny-sd2", "cpu"))
    inputs = example_inputs(model, 2, 8, 8, 77)
    half = {k: v.half() for k, v in inputs.items()}
    out = unet(half["x"], half["timesteps"], half["context"])
    assert out.dtype == torch.float16 and out.device.type == "cpu"
    with torch.no_grad():
        ref = model(**{k: v.float() for k, v in half.items()})
    assert float((out.float() - ref).abs().max() / ref.abs().max()) < 2e-3  # fp16 rounding of the output


@pytest.mark.parametrize("name", ["tiny-sd2", "tiny-sd1", "tiny-sdxl"])
def test_cuda_recipe_fuses_every_unet_pattern_into_fp16(name, artefact_of):
    """Exported from the WebUI's ldm class (SD1/SD2) and from diffusers (SDXL shapes)."""
    artefact = artefact_of(name, "cuda")
    ops = op_counts(artefact.model_path)
    n = layers(name)
    assert ops.get("MultiHeadAttention") == n["attention"]  # one per attention layer
    assert ops.get("Attention", 0) == 0 and ops.get("Softmax", 0) == 0
    assert ops.get("GroupNorm", 0) + ops.get("SkipGroupNorm", 0) == n["group_norm"]
    assert ops.get("SkipGroupNorm", 0) >= 1
    assert ops.get("NhwcConv") == n["conv"]
    assert ops.get("BiasSplitGelu") == n["transformer_blocks"]
    assert ops.get("BiasAdd", 0) >= 1
    assert ops.get("SkipLayerNormalization", 0) >= 1
    types = dict(artefact.manifest["io_types"])
    assert types.pop("timestep") == "FLOAT" and set(types.values()) == {"FLOAT16"}  # time embedding: fp32
    inits = initializer_types(artefact.model_path)
    assert inits.get("FLOAT16", 0) > inits.get("FLOAT", 0)
    assert artefact.manifest["precision"] == "fp16" and artefact.manifest["min_runtime_ort"] == "1.17.0"


def _time_embedding_types(model):
    """Element types of the Sin/Cos outputs and of the constants they are computed from, by ONNX type
    inference on the subgraph that feeds them (standard ops only; the rest holds contrib ops)."""
    import onnx
    from onnx import helper

    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    sincos = [n for n in model.graph.node if n.op_type in ("Sin", "Cos")]
    nodes, stack = [], list(sincos)
    while stack:
        n = stack.pop()
        if n not in nodes:
            nodes.append(n)
            stack.extend(producer[i] for i in n.input if i in producer)
    order = [n for n in model.graph.node if n in nodes]
    inputs = [v for v in model.graph.input if any(v.name in n.input for n in order)]
    used_inits = [inits[i] for n in order for i in n.input if i in inits]
    outs = [helper.make_tensor_value_info(o, 0, None) for n in sincos for o in n.output]
    sub = helper.make_model(helper.make_graph(order, "time", inputs, outs, used_inits),
                            opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")])
    inferred = onnx.shape_inference.infer_shapes(sub, strict_mode=True)
    types = {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
             for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    consts = {onnx.TensorProto.DataType.Name(a.t.data_type) for n in order if n.op_type == "Constant"
              for a in n.attribute if a.name == "value"}
    consts |= {onnx.TensorProto.DataType.Name(t.data_type) for t in used_inits}
    return {n.op_type: types[n.output[0]] for n in sincos}, consts, [v.name for v in inputs], sincos


@pytest.mark.parametrize("name", ["tiny-sd2", "tiny-sdxl"])
def test_cuda_recipe_computes_the_time_embedding_in_fp32_from_an_fp32_timestep(name, artefact_of):
    import onnx

    artefact = artefact_of(name, "cuda")
    model = onnx.load(str(artefact.model_path), load_external_data=False)
    sincos, consts, inputs, nodes = _time_embedding_types(model)
    assert sincos == {"Sin": "FLOAT", "Cos": "FLOAT"}
    assert "FLOAT16" not in consts and "FLOAT" in consts  # the frequencies stay fp32, not rounded
    assert "timestep" in inputs and artefact.manifest["io_types"]["timestep"] == "FLOAT"
    readers = [n for n in model.graph.node for s in nodes if s.output[0] in n.input]
    assert readers and all(n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT16 for n in readers)
    assert {"Sin", "Cos"} <= {n.rsplit("/", 1)[-1] for n in artefact.manifest["fp32_nodes"]}


def test_manifest_records_the_memcpy_count_where_it_could_be_measured(artefact_of):
    import onnxruntime

    assert artefact_of("tiny-sd2", "cpu").manifest["placement"]["memcpy_nodes"] == 0
    placement = artefact_of("tiny-sd2", "cuda").manifest["placement"]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert placement["memcpy_nodes"] == 0, placement
    else:
        assert placement is None  # this toolchain's ORT cannot place a graph on CUDA: not measured


def test_dml_recipe_uses_only_directml_safe_fusions(artefact_of):
    artefact = artefact_of("tiny-sd2", "dml")
    ops = op_counts(artefact.model_path)
    n = layers("tiny-sd2")
    assert ops.get("MultiHeadAttention") == n["attention"]
    assert ops.get("GroupNorm") == n["group_norm"]  # channels-first, no Skip variant
    for unsafe in ("NhwcConv", "BiasSplitGelu", "BiasAdd", "SkipGroupNorm", "SkipLayerNormalization"):
        assert unsafe not in ops
    assert set(artefact.manifest["io_types"].values()) == {"FLOAT16"}


@pytest.mark.parametrize("ep", ["tensorrt", "openvino"])
def test_compiling_providers_get_a_clean_fp32_graph(artefact_of, ep):
    """TensorRT and OpenVINO compile the ONNX graph themselves: ORT's contrib ops would be left to the CPU."""
    artefact = artefact_of("tiny-sd2", ep)
    model = __import__("onnx").load(str(artefact.model_path), load_external_data=False)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}  # no ORT contrib op
    ops = op_counts(model)
    assert ops.get("InstanceNormalization") == layers("tiny-sd2")["group_norm"]
    assert set(artefact.manifest["io_types"].values()) == {"FLOAT"}
    assert initializer_types(model).get("FLOAT16", 0) == 0


def test_gpu_artefact_on_a_cpu_only_runtime_is_a_clear_error(artefact_of):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this runtime has CUDA")
    with pytest.raises(OrtTurboError, match="has no CUDAExecutionProvider"):
        OrtUnet(artefact_of("tiny-sd2", "cuda"))


def test_recipes_are_data_and_olive_config_carries_them(tmp_path):
    for ep in RECIPES:
        recipe = get_recipe(ep)
        cfg = olive_config(recipe, str(tmp_path), "model.onnx", str(tmp_path / "o"), str(tmp_path / "c"))
        assert cfg["input_model"] == {"type": "ONNXModel", "model_path": str(tmp_path), "onnx_file_name": "model.onnx"}
        assert cfg["systems"]["local_system"]["accelerators"] == [
            {"device": recipe["device"], "execution_providers": [recipe["provider"]]}]
        assert cfg["passes"] == recipe["passes"]
        for p in cfg["passes"].values():
            assert p["save_as_external_data"] and p["all_tensors_to_one_file"]
    # what each recipe's passes do is checked above on the graphs they build (fused ops, dtypes)
    changed = get_recipe("cpu")
    changed["passes"]["optimize"]["float16"] = not changed["passes"]["optimize"]["float16"]
    assert get_recipe("cpu") != changed  # a copy: the table itself is unchanged
    with pytest.raises(ValueError, match="unknown execution provider"):
        get_recipe("rocm")
