"""The VAE on ONNX Runtime: export parity (ldm and diffusers AutoencoderKL), the per-provider recipes,
artefacts keyed by checkpoint and VAE, ``OrtVae``'s contract, and the fp16 NaN guard."""

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from lib_ort.errors import ArtefactError, ExportError, UnsupportedInput
from lib_ort.export import MODEL_FILE
from lib_ort.graph import initializer_types, io_types, op_counts
from lib_ort.recipes import RECIPES, VAE_RECIPES, cpu_fp16_vae_recipe, get_vae_recipe, vae_precision
from lib_ort.registry import Registry
from lib_ort.vae import GuardedDecoder, OrtVae, forget_fp16_overflows, fp16_overflowed
from lib_ort.bench.vae_architectures import build_vae
from lib_ort.parts.vae import DecoderGraph, EncoderGraph, describe_vae, export_vae
from lib_ort.pipeline import find_vae_artefact, prepare_vae

FLAVOURS = ("tiny-ldm", "tiny-diffusers")
CKPT = {"hash": "c" * 64, "name": "tiny.safetensors"}
SIZES = [(1, 8, 8), (2, 6, 10), (3, 12, 4)]  # (B, latent h, latent w): H != W, odd multiples

_vaes: dict = {}


def vae(name):
    if name not in _vaes:
        _vaes[name] = build_vae(name, seed=0)
    return _vaes[name]


def vae_record(name):
    return {"hash": name.ljust(64, "0").encode().hex()[:64], "name": name}


def rel(out, ref):
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max())


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return Registry(tmp_path_factory.mktemp("vae-registry"))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae-exports")
    return {name: (root / name, export_vae(vae(name), root / name)) for name in FLAVOURS}


# -- export --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FLAVOURS)
def test_export_matches_torch_for_decode_and_encode_at_many_sizes(name, exports):
    folder, info = exports[name]
    model = vae(name)
    scale = info["vae"]["scale"]
    for part, graph, make in (("decoder", DecoderGraph, lambda b, h, w: torch.randn(b, 4, h, w)),
                              ("encoder", EncoderGraph, lambda b, h, w: torch.rand(b, 3, h * scale, w * scale) * 2 - 1)):
        session = ort.InferenceSession(str(folder / part / MODEL_FILE), providers=["CPUExecutionProvider"])
        for b, h, w in SIZES:
            x = make(b, h, w)
            with torch.no_grad():
                ref = graph(model)(x)
            out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
            assert out.shape == ref.shape
            assert ref.abs().max() > 0.01
            assert rel(out, ref) <= 1e-4, (name, part, (b, h, w), rel(out, ref))


@pytest.mark.parametrize("name", FLAVOURS)
def test_export_has_dynamic_batch_height_width_and_fp32_io(name, exports):
    folder, info = exports[name]
    assert info["parts"] == ["decoder", "encoder"]
    for part, (in_name, out_name) in {"decoder": ("latent", "image"), "encoder": ("image", "moments")}.items():
        graph = onnx.load(str(folder / part / MODEL_FILE), load_external_data=False).graph
        assert [i.name for i in graph.input] == [in_name] and [o.name for o in graph.output] == [out_name]
        dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        assert dims[0] == "B" and dims[2:] == ["H", "W"]
        assert set(io_types(folder / part / MODEL_FILE).values()) == {"FLOAT"}


def test_describe_reads_both_flavours_and_refuses_other_modules():
    ldm, diffusers = describe_vae(vae("tiny-ldm")), describe_vae(vae("tiny-diffusers"))
    assert (ldm.flavour, diffusers.flavour) == ("ldm", "diffusers")
    assert ldm.latent_channels == diffusers.latent_channels == 4 and ldm.scale == diffusers.scale == 2
    with pytest.raises(ValueError, match="not an AutoencoderKL-style VAE"):
        describe_vae(nn.Conv2d(3, 3, 1))
    with pytest.raises(ExportError, match="not an AutoencoderKL-style VAE"):
        export_vae(nn.Conv2d(3, 3, 1), "/tmp/never-made")


def test_the_vae_is_put_back_where_it_was_after_export(tmp_path):
    model = build_vae("tiny-ldm", seed=3).half()
    export_vae(model, tmp_path / "x", parts=("decoder",))
    assert next(model.parameters()).dtype == torch.float16
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["decoder", "vae-export.json"]


# -- recipes -------------------------------------------------------------------------------------------

def test_vae_recipes_are_data_per_provider_and_precision():
    assert set(VAE_RECIPES) == {("cuda", "fp16"), ("cuda", "fp32"), ("dml", "fp16"), ("dml", "fp32"),
                                ("cpu", "fp32"), ("tensorrt", "fp32"), ("openvino", "fp32")}
    assert vae_precision("cuda", True) == "fp16" and vae_precision("cuda", False) == "fp32"
    assert vae_precision("dml", True) == "fp16" and vae_precision("cpu", True) == "fp32"
    assert vae_precision("tensorrt", True) == "fp32"
    assert vae_precision("openvino", True) == "fp32"  # an fp32 graph; OpenVINO chooses bf16 itself at load time
    assert set(get_vae_recipe("openvino", "fp32")["passes"]) == {"clean"}  # no ORT fusion: OpenVINO compiles it
    cuda16 = get_vae_recipe("cuda", "fp16")["passes"]["optimize"]
    assert cuda16["model_type"] == "vae" and cuda16["float16"] is True and cuda16["keep_io_types"] is False
    assert get_vae_recipe("cpu", "fp32")["passes"]["optimize"]["optimization_options"]["enable_group_norm"] is False
    assert RECIPES["cuda"]["passes"]["optimize"]["model_type"] == "unet"  # the UNet recipes are untouched
    with pytest.raises(ValueError, match="no VAE recipe for cpu in fp16"):
        get_vae_recipe("cpu", "fp16")


# -- artefacts -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cpu_artefact(registry):
    return prepare_vae(vae("tiny-diffusers"), registry, CKPT, vae_record("tiny-diffusers"), "cpu", "fp32")


@pytest.fixture(scope="module")
def cuda_artefact(registry):
    return prepare_vae(vae("tiny-ldm"), registry, CKPT, vae_record("tiny-ldm"), "cuda", "fp16")


def test_cpu_artefact_decodes_and_encodes_like_torch(cpu_artefact):
    model = vae("tiny-diffusers")
    ort_vae = OrtVae(cpu_artefact)
    # the session really runs without ORT's CPU arena (faster for 512² VAE activations, see sessions.py)
    assert ort_vae._part("decoder")[0].get_session_options().enable_cpu_mem_arena is False
    for b, h, w in SIZES:
        z = torch.randn(b, 4, h, w)
        with torch.no_grad():
            ref = model.decode(z).sample
        out = ort_vae.decode(z)
        assert out.shape == (b, 3, 2 * h, 2 * w) and out.dtype == torch.float32
        assert rel(out, ref) <= 1e-4, ((b, h, w), rel(out, ref))
        x = torch.rand(b, 3, 2 * h, 2 * w) * 2 - 1
        with torch.no_grad():
            ref_moments = model.encode(x).latent_dist.parameters
        moments = ort_vae.encode_moments(x)
        assert moments.shape == (b, 8, h, w)
        assert rel(moments, ref_moments) <= 1e-4
    half = ort_vae.decode(torch.randn(1, 4, 8, 8).half())
    assert half.dtype == torch.float16  # the tensor comes back as the WebUI's fp16 VAE would give it


def test_cpu_artefact_manifest(cpu_artefact):
    m = cpu_artefact.manifest
    assert m["kind"] == "vae" and m["ep"] == "cpu" and m["precision"] == "fp32"
    assert m["vae"] == vae_record("tiny-diffusers") and m["checkpoint"] == CKPT
    assert set(m["parts"]) == {"decoder", "encoder"}
    assert m["recipe"] == VAE_RECIPES[("cpu", "fp32")]
    assert set(m["files"]) == {"decoder/model.onnx", "decoder/weights.pb", "encoder/model.onnx", "encoder/weights.pb"}
    for part in m["parts"].values():
        for no_cpu_kernel in ("GroupNorm", "SkipGroupNorm", "NhwcConv"):
            assert no_cpu_kernel not in part["fused_ops"]


def test_cuda_fp16_recipe_graph_is_fused_and_fp16(cuda_artefact):
    model = vae("tiny-ldm")
    m = cuda_artefact.manifest
    assert m["precision"] == "fp16" and m["min_runtime_ort"] == "1.17.0"
    for part, module in (("decoder", nn.Sequential(model.post_quant_conv, model.decoder)),
                         ("encoder", nn.Sequential(model.encoder, model.quant_conv))):
        path = cuda_artefact.folder / m["parts"][part]["model_file"]
        ops = op_counts(path)
        norms = sum(isinstance(x, nn.GroupNorm) for x in module.modules())
        convs = sum(isinstance(x, nn.Conv2d) for x in module.modules())
        # ldm's attention block normalises before 1x1 convolutions, so every GroupNorm is fused, and
        # every convolution runs channels-last
        assert ops.get("GroupNorm", 0) + ops.get("SkipGroupNorm", 0) == norms, (part, ops)
        assert ops.get("SkipGroupNorm", 0) >= 1 and "InstanceNormalization" not in ops
        assert ops.get("NhwcConv", 0) == convs and "Conv" not in ops, (part, ops)
        assert set(io_types(path).values()) == {"FLOAT16"}
        inits = initializer_types(path)
        assert inits.get("FLOAT16", 0) > inits.get("FLOAT", 0)


def test_another_vae_is_never_served_by_this_artefact(registry, cpu_artefact):
    other = vae_record("tiny-ldm")
    assert find_vae_artefact(registry, CKPT["hash"], other["hash"], "cpu") is None
    with pytest.raises(ArtefactError, match="made for the VAE tiny-diffusers"):
        registry.load(cpu_artefact.id, CKPT["hash"], vae_hash=other["hash"])
    # the same VAE with another checkpoint is another artefact too
    assert find_vae_artefact(registry, "f" * 64, vae_record("tiny-diffusers")["hash"], "cpu") is None
    found = find_vae_artefact(registry, CKPT["hash"], vae_record("tiny-diffusers")["hash"], "cpu")
    assert found.folder == cpu_artefact.folder
    # the UNet lookup of the same checkpoint and provider does not return the VAE
    assert registry.find(CKPT["hash"], "cpu") is None
    assert "-vae-" in cpu_artefact.id and vae_record("tiny-diffusers")["hash"][:10] in cpu_artefact.id


def test_prepare_reuses_a_valid_artefact(registry, cpu_artefact):
    again = prepare_vae(None, registry, CKPT, vae_record("tiny-diffusers"), "cpu", "fp32")
    assert again.folder == cpu_artefact.folder and again.manifest["created"] == cpu_artefact.manifest["created"]


@pytest.mark.parametrize("call, message", [
    (lambda v: v.decode(torch.randn(1, 8, 8, 8)), "this VAE decodes \\[B, 4, h, w\\]"),
    (lambda v: v.decode(torch.randn(4, 8, 8)), "latents of shape"),
    (lambda v: v.encode_moments(torch.randn(1, 4, 16, 16)), "this VAE encodes \\[B, 3, H, W\\]"),
    (lambda v: v.encode_moments(torch.randn(1, 3, 15, 16)), "not a multiple of 2"),
])
def test_unsupported_inputs_are_refused_before_running(cpu_artefact, call, message):
    with pytest.raises(UnsupportedInput, match=message):
        call(OrtVae(cpu_artefact))


# -- the NaN guard -------------------------------------------------------------------------------------

def _overflowing_vae():
    """A VAE whose decoder output exceeds fp16's range (65504): finite in fp32, inf in fp16."""
    model = build_vae("tiny-ldm", seed=5)
    with torch.no_grad():
        model.decoder.conv_out.weight *= 1e6
        model.decoder.conv_out.bias *= 1e6
    return model




@pytest.fixture(scope="module")
def overflow(registry):
    model = _overflowing_vae()
    record = {"hash": "9" * 64, "name": "overflowing-vae"}
    fp16 = prepare_vae(model, registry, CKPT, record, "cpu", "fp16", recipe=cpu_fp16_vae_recipe())
    fp32 = prepare_vae(model, registry, CKPT, record, "cpu", "fp32")
    return model, OrtVae(fp16), OrtVae(fp32)


def test_nan_guard_decodes_again_in_fp32_and_remembers_the_vae(overflow):
    model, fp16, fp32 = overflow
    forget_fp16_overflows()
    z = torch.randn(1, 4, 8, 8)
    assert not torch.isfinite(fp16.decode(z)).all()  # the precondition: this VAE overflows in fp16
    with torch.no_grad():
        ref = model.decode(z)
    assert torch.isfinite(ref).all()
    torch_calls, notes = [], []

    def torch_decode(latent):
        torch_calls.append(latent.dtype)
        with torch.no_grad():
            return model.decode(latent)

    guard = GuardedDecoder(fp16, vae_name="overflowing-vae", torch_decode=torch_decode, fp32=fp32,
                           notify=lambda message, first: notes.append((message, first)))
    out = guard.decode(z)
    assert torch.isfinite(out).all() and rel(out, ref) <= 1e-4
    assert guard.last_source == "ort-fp32" and torch_calls == []
    assert fp16_overflowed(fp16.vae_hash)
    assert notes[0][1] is True and "NaN/inf" in notes[0][0]
    guard.decode(z)  # remembered: straight to fp32, and the console is not told again
    assert guard.last_source == "ort-fp32" and [first for _, first in notes] == [True, False]
    forget_fp16_overflows()


def test_nan_guard_without_an_fp32_artefact_uses_pytorch_in_fp32(overflow):
    model, fp16, _ = overflow
    forget_fp16_overflows()
    z = torch.randn(2, 4, 6, 8).half()
    torch_calls = []

    def torch_decode(latent):
        torch_calls.append(latent.dtype)
        with torch.no_grad():
            return model.decode(latent)

    out = GuardedDecoder(fp16, vae_name="overflowing-vae", torch_decode=torch_decode).decode(z)

    def guard_source(model, fp16, z):
        guard = GuardedDecoder(fp16, vae_name="overflowing-vae", torch_decode=torch_decode)
        guard.decode(z)
        return guard.last_source

    assert torch_calls == [torch.float32] and guard_source(model, fp16, z) == "torch-fp32"
    assert out.dtype == torch.float32 and torch.isfinite(out).all()  # fp32: fp16 would overflow again
    forget_fp16_overflows()


def test_fp16_output_that_is_finite_is_returned_as_is(overflow, cpu_artefact):
    fp32 = OrtVae(cpu_artefact)
    guard = GuardedDecoder(fp32, vae_name="x", torch_decode=lambda z: pytest.fail("no fallback expected"))
    out = guard.decode(torch.randn(1, 4, 8, 8))
    assert guard.last_source == "ort" and torch.isfinite(out).all()
