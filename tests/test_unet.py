"""OrtUnet's contract: WebUI-shaped tensors in and out, and one exception type for what it cannot serve."""

import pytest
import torch

from conftest import tiny_model
from lib_ort.bench.architectures import example_inputs
from lib_ort.errors import UnsupportedInput
from lib_ort.unet import OrtUnet


@pytest.fixture(scope="module")
def sd_unet(artefact_of):
    return OrtUnet(artefact_of("tiny-sd2", "cpu"))


@pytest.fixture(scope="module")
def xl_unet(artefact_of):
    return OrtUnet(artefact_of("tiny-sdxl", "cpu"))


def call(unet, b=1, c=4, h=8, w=8, s=77, d=96, t_rows=None, y=None):
    return unet(torch.randn(b, c, h, w), torch.full((t_rows or b,), 500.5), torch.randn(b, s, d), y=y)


@pytest.mark.parametrize("kwargs, message", [
    (dict(c=9), "inpainting model input with 9 channels; this artefact was exported for 4"),
    (dict(d=1024), "takes width 96"),
    (dict(b=17), "batch 17 is outside this artefact's range 1..16"),
    (dict(h=512), "latent height 4096 px is outside this artefact's range 16..2048 px"),
    (dict(h=9), "not a multiple of 2"),
    (dict(s=77 * 9), "text length 693 is outside"),
    (dict(b=2, t_rows=3), "batch mismatch: the latent has 2 rows, timesteps has 3"),
    (dict(y=torch.randn(1, 96)), "does not take"),
])
def test_inputs_the_artefact_cannot_serve_raise_one_exception_type(sd_unet, kwargs, message):
    with pytest.raises(UnsupportedInput, match=message) as info:
        call(sd_unet, **kwargs)
    assert info.value.reason == str(info.value)


def test_sdxl_artefact_checks_y(xl_unet):
    with pytest.raises(UnsupportedInput, match="no 'y'"):
        call(xl_unet, d=64)
    with pytest.raises(UnsupportedInput, match="refiner uses 2560"):
        call(xl_unet, d=64, y=torch.randn(1, 2560))
    with pytest.raises(UnsupportedInput, match="batch mismatch"):
        call(xl_unet, b=2, d=64, y=torch.randn(1, 96))
    assert call(xl_unet, d=64, y=torch.randn(1, 96)).shape == (1, 4, 8, 8)


def test_controlnet_residuals_are_refused(sd_unet):
    with pytest.raises(UnsupportedInput, match="ControlNet"):
        sd_unet(torch.randn(1, 4, 8, 8), torch.ones(1), torch.randn(1, 77, 96), control=[torch.zeros(1)])


def test_one_timestep_for_the_whole_batch_is_broadcast(sd_unet):
    model = tiny_model("tiny-sd2")
    inputs = example_inputs(model, 3, 8, 8, 77)
    t = torch.tensor([321.25])
    with torch.no_grad():
        ref = model(inputs["x"], t.expand(3), inputs["context"])
    out = sd_unet(inputs["x"], t, inputs["context"])
    assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-4


def test_output_keeps_the_input_layout_dtype_and_device(sd_unet):
    x = torch.randn(2, 4, 8, 16, dtype=torch.float16)
    out = sd_unet(x, torch.ones(2, dtype=torch.float16), torch.randn(2, 154, 96, dtype=torch.float16))
    assert out.shape == x.shape and out.dtype == torch.float16 and out.device == x.device
    assert out.is_contiguous()


# -- fp16 artefacts: per-input dtypes (fp32 timestep) and the NaN guard ---------------------------------

from lib_ort.optimize import optimize_export  # noqa: E402
from lib_ort.recipes import cpu_fp16_unet_recipe  # noqa: E402
from lib_ort import unet as unet_module  # noqa: E402
from lib_ort.unet import NonFiniteOutput  # noqa: E402


def _fp16_cpu_unet(model, registry, name):
    from conftest import ensure_export
    from lib_ort.describe import state_dict_digest

    checkpoint = {"hash": state_dict_digest(model), "name": name}
    folder, _ = ensure_export(model, registry, checkpoint)
    return OrtUnet(optimize_export(folder, "cpu", registry, checkpoint=checkpoint, recipe=cpu_fp16_unet_recipe()))


@pytest.fixture(scope="module")
def fp16_unet(shared_registry):
    return _fp16_cpu_unet(tiny_model("tiny-sd2"), shared_registry, "tiny-sd2")


def test_fp16_artefact_takes_an_fp32_timestep_beside_fp16_inputs(fp16_unet):
    assert fp16_unet.artefact.manifest["io_types"]["timestep"] == "FLOAT"
    feeds = fp16_unet.feeds(torch.randn(2, 4, 8, 8, dtype=torch.float16), torch.tensor([999.25], dtype=torch.float64),
                            torch.randn(2, 77, 96, dtype=torch.float16))
    assert {n: t.dtype for n, t in feeds.items()} == {
        "sample": torch.float16, "timestep": torch.float32, "encoder_hidden_states": torch.float16}
    assert feeds["timestep"].tolist() == [999.25, 999.25]  # not rounded to fp16's 999.0


def test_fp16_artefact_tells_t_from_t_plus_a_quarter_like_torch(fp16_unet):
    """Near t = 999 fp16 steps by 0.5: an fp16 timestep would make t and t + 0.25 the same input."""
    model = tiny_model("tiny-sd2")
    inputs = example_inputs(model, 1, 8, 8, 77, seed=4)
    x, c = inputs["x"].half(), inputs["context"].half()
    out = {t: fp16_unet(x, torch.tensor([t]), c).float() for t in (999.0, 999.25)}
    with torch.no_grad():
        ref = {t: model(x.float(), torch.tensor([t]), c.float()) for t in (999.0, 999.25)}
    ref_step = (ref[999.25] - ref[999.0]).abs().max()
    ort_step = (out[999.25] - out[999.0]).abs().max()
    assert ref_step > 0 and 0.5 < float(ort_step / ref_step) < 2.0, (float(ort_step), float(ref_step))
    for t in out:
        assert float((out[t] - ref[t]).abs().max() / ref[t].abs().max()) < 5e-3


def _overflowing_unet():
    """A UNet whose output exceeds fp16's range (65504): finite in fp32, inf in fp16."""
    from lib_ort.bench.architectures import build_unet

    model = build_unet("tiny-sd2", seed=7)
    with torch.no_grad():
        model.out[-1].weight *= 1e6
        model.out[-1].bias *= 1e6
    return model


def test_nan_guard_sends_an_overflowing_fp16_call_to_pytorch_and_says_so_once(shared_registry):
    model = _overflowing_unet()
    unet = _fp16_cpu_unet(model, shared_registry, "overflowing-unet")
    unet_module._OVERFLOWED.clear()  # what this session remembers of overflowing artefacts
    inputs = example_inputs(model, 1, 8, 8, 77, seed=2)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs)).all()  # finite in fp32: only fp16 overflows
    with pytest.raises(NonFiniteOutput, match="gave NaN/inf") as first:
        unet(inputs["x"].half(), inputs["timesteps"], inputs["context"].half())
    assert first.value.first_time and isinstance(first.value, UnsupportedInput)  # the WebUI runs PyTorch
    with pytest.raises(NonFiniteOutput, match="seen earlier this session") as again:
        unet(inputs["x"].half(), inputs["timesteps"], inputs["context"].half())
    assert not again.value.first_time
    unet_module._OVERFLOWED.clear()  # what this session remembers of overflowing artefacts


def test_fp32_artefacts_are_not_guarded(sd_unet):
    assert not sd_unet.guarded
