import pytest
import torch
from torch import nn

from conftest import tiny_model
from lib_ort.bench.architectures import DiffusersAsWebuiUnet, build_unet
from lib_ort.describe import Family, describe_unet, state_dict_digest


@pytest.mark.parametrize("name, family, in_ch, context, adm, label", [
    ("tiny-sd1", Family.SD1, 4, 64, None, "SD1"),
    ("tiny-sd2", Family.SD2, 4, 96, None, "SD2"),
    ("tiny-sd2-inpaint", Family.SD2, 9, 96, None, "SD2 inpaint"),
    ("tiny-sdxl", Family.SDXL, 4, 64, 96, "SDXL"),
])
def test_tiny_models_are_described_from_their_layers(name, family, in_ch, context, adm, label):
    d = describe_unet(tiny_model(name))
    assert d.family is family
    assert (d.io.in_channels, d.io.out_channels, d.io.context_dim, d.io.adm_dim) == (in_ch, 4, context, adm)
    assert d.io.spatial_multiple == 2  # two levels: one downsampling
    assert d.label == label
    assert d.io.inpaint == (in_ch == 9)


@pytest.mark.parametrize("name, family, context, adm, multiple", [
    ("sd15", Family.SD1, 768, None, 8),
    ("sd-turbo", Family.SD2, 1024, None, 8),
    ("sdxl-turbo", Family.SDXL, 2048, 2816, 4),
])
def test_full_size_architectures(name, family, context, adm, multiple):
    d = describe_unet(build_unet(name, device="meta"))
    assert (d.family, d.io.context_dim, d.io.adm_dim, d.io.spatial_multiple) == (family, context, adm, multiple)
    assert d.parameters > 800e6


def test_sdxl_refiner_is_told_apart_by_its_adm_width():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            block_out_channels=(384, 768), layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=1280, attention_head_dim=(6, 12),
            use_linear_projection=True, class_embed_type="projection", projection_class_embeddings_input_dim=2560)
    d = describe_unet(DiffusersAsWebuiUnet(unet))
    assert d.family is Family.SDXL_REFINER
    assert d.io.adm_dim == 2560 and d.io.context_dim == 1280


def test_not_a_unet_is_refused():
    with pytest.raises(ValueError, match="not a text-conditioned UNet"):
        describe_unet(nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()))


def test_digest_follows_the_weights():
    a, b = build_unet("tiny-sd1", seed=0), build_unet("tiny-sd1", seed=0)
    assert state_dict_digest(a) == state_dict_digest(b)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1.0
    assert state_dict_digest(a) != state_dict_digest(b)
    assert state_dict_digest(build_unet("tiny-sd1", seed=1)) != state_dict_digest(a)
