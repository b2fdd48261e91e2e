"""OrtUnet's contract: WebUI-shaped tensors in and out, and one exception type for what it cannot serve."""

import pytest
import torch

from conftest import tiny_model
from lib_ort.architectures import example_inputs
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
