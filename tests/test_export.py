import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from conftest import TINY, tiny_model
from lib_ort.bench.architectures import example_inputs
from lib_ort.attention import sdpa_attention
from lib_ort.errors import ExportError
from lib_ort.export import MODEL_FILE, WEIGHTS_FILE, export_model, load_export_info, on_cpu_in_fp32
from lib_ort.parts.unet import UNET
from lib_ort.graph import io_types, op_counts

SHAPES = [(1, 8, 8, 77), (2, 12, 8, 154), (3, 8, 16, 77)]  # (B, latent H, latent W, S): H != W, S in {77, 154}


def _feed(inputs):
    feed = {"sample": inputs["x"], "timestep": inputs["timesteps"], "encoder_hidden_states": inputs["context"]}
    if "y" in inputs:
        feed["y"] = inputs["y"]
    return {k: v.numpy() for k, v in feed.items()}


@pytest.mark.parametrize("name", TINY)
def test_export_matches_torch_at_many_shapes_in_one_graph(name, export_of):
    model = tiny_model(name)
    folder = export_of(name)
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    for b, h, w, s in SHAPES:
        inputs = example_inputs(model, b, h, w, s, seed=b)
        with torch.no_grad():
            ref = model(**inputs)
        out = torch.from_numpy(session.run(None, _feed(inputs))[0])
        assert out.shape == ref.shape
        assert ref.abs().max() > 0.01  # random weights give a non-trivial output
        rel = (out - ref).abs().max() / ref.abs().max()
        assert rel <= 1e-4, (name, (b, h, w, s), float(rel))


@pytest.mark.parametrize("name", TINY)
def test_export_io_names_dynamic_axes_and_one_weights_file(name, export_of):
    folder = export_of(name)
    assert sorted(p.name for p in folder.iterdir()) == ["export.json", MODEL_FILE, WEIGHTS_FILE]
    graph = onnx.load(str(folder / MODEL_FILE), load_external_data=False).graph
    names = [i.name for i in graph.input]
    expected = ["sample", "timestep", "encoder_hidden_states"] + (["y"] if name == "tiny-sdxl" else [])
    assert names == expected
    assert [o.name for o in graph.output] == ["latent"]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["sample"][0] == "B" and dims["sample"][2:] == ["H", "W"]
    assert dims["timestep"] == ["B"]  # one fractional t per row, as the WebUI passes it
    assert dims["encoder_hidden_states"][:2] == ["B", "S"]
    assert set(io_types(folder / MODEL_FILE).values()) == {"FLOAT"}
    locations = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {WEIGHTS_FILE}
    assert (folder / WEIGHTS_FILE).stat().st_size > 0.9 * 4 * sum(p.numel() for p in tiny_model(name).parameters())
    info = load_export_info(folder)
    assert info["opset"] == 17 and info["input_names"] == expected


def test_opset_is_selectable(tmp_path):
    result = export_model(UNET, tiny_model("tiny-sd1"), tmp_path / "op14", opset=14)
    model = onnx.load(str(result.model_path), load_external_data=False)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [14]


def test_sdpa_is_installed_for_the_export_and_restored_after():
    from ldm.modules.attention import CrossAttention

    original = CrossAttention.forward
    model = tiny_model("tiny-sd1")
    with sdpa_attention(model) as patched:
        assert patched == 1
        assert CrossAttention.forward is not original
    assert CrossAttention.forward is original
    with pytest.raises(RuntimeError):
        with sdpa_attention(model):
            raise RuntimeError("boom")
    assert CrossAttention.forward is original


def test_sdpa_attention_computes_what_ldm_attention_computes():
    model = tiny_model("tiny-sd2")
    inputs = example_inputs(model, 2, 8, 8, 77)
    with torch.no_grad():
        ref = model(**inputs)
        with sdpa_attention(model):
            out = model(**inputs)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


def test_ldm_export_traces_attention_as_sdpa(export_of):
    """The raw graph of an SDPA trace holds one Softmax per attention layer (fused later by ORT)."""
    counts = op_counts(export_of("tiny-sd1") / MODEL_FILE)
    layers = sum(type(m).__name__ == "CrossAttention" for m in tiny_model("tiny-sd1").modules())
    assert counts["Softmax"] == layers


def test_fp16_model_is_exported_in_fp32_and_given_back_in_fp16(tmp_path):
    from lib_ort.bench.architectures import build_unet

    model = build_unet("tiny-sd1").half()
    result = export_model(UNET, model, tmp_path / "half")
    assert next(model.parameters()).dtype == torch.float16
    assert set(io_types(result.model_path).values()) == {"FLOAT"}


def test_on_cpu_in_fp32_restores_on_error():
    model = nn.Linear(2, 2).half()
    with pytest.raises(KeyError):
        with on_cpu_in_fp32(model):
            assert model.weight.dtype == torch.float32
            raise KeyError("x")
    assert model.weight.dtype == torch.float16


class _Broken(nn.Module):
    """A UNet-shaped module whose forward fails while tracing."""

    def __init__(self):
        super().__init__()
        self.inner = tiny_model("tiny-sd1")

    def forward(self, x, timesteps=None, context=None, y=None):
        raise RuntimeError("tracing failed on purpose")


def test_failed_export_leaves_nothing_and_says_why(tmp_path):
    target = tmp_path / "exports" / "broken"
    with pytest.raises(ExportError, match="tracing failed on purpose"):
        export_model(UNET, _Broken(), target)
    assert not target.exists()
    assert list((tmp_path / "exports").iterdir()) == []  # no half-written temp folder either


def test_export_refuses_to_overwrite(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_model(UNET, tiny_model("tiny-sd1"), tmp_path / "x")
